//! The configuration objects on the socket: list, get, put and delete for
//! delivery servers, user groups, users, DNS templates and sender domains,
//! plus `domain.verify` and `domain.records`.
//!
//! Reads come from the stored objects, with secrets replaced by
//! `"(set)"`: relay passwords are stored sealed and user passwords as
//! hashes, and neither ever leaves the daemon. Writes go through
//! `Engine::change`, which validates the whole set, stores it durably and
//! applies it live.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::domains::{DnsTemplate, RecordKind, SenderDomain};
use crate::engine::Engine;
use crate::tenancy::{
    CHANNELS, Change, DeliveryServerSpec, SECRET_PLACEHOLDER, TenancyError, User, UserGroup,
};

/// The object kinds, named as on the socket and in the object table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Group,
    User,
    Template,
    Domain,
}

impl Kind {
    pub fn from_noun(noun: &str) -> Option<Kind> {
        Some(match noun {
            "server" => Kind::Server,
            "group" => Kind::Group,
            "user" => Kind::User,
            "template" => Kind::Template,
            "domain" => Kind::Domain,
            _ => return None,
        })
    }

    /// The key of the object table (and the noun).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Group => "group",
            Kind::User => "user",
            Kind::Template => "template",
            Kind::Domain => "domain",
        }
    }

    /// The field that names an object of this kind.
    fn key_field(self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            _ => "name",
        }
    }
}

pub async fn handle(
    ctx: &Arc<AdminContext>,
    kind: Kind,
    verb: &str,
    args: &Args<'_>,
) -> Result<Value, AdminError> {
    let engine = ctx.engine.clone();
    match verb {
        "list" => {
            let all = blocking(move || stored(&engine, kind)).await?;
            Ok(Value::Array(all.into_iter().map(|(_, v)| v).collect()))
        }
        "get" => {
            let name = args.str(kind.key_field())?.to_owned();
            blocking(move || get(&engine, kind, &name)).await
        }
        "put" => {
            let change = change_for_put(&engine, kind, args)?;
            let name = put_name(&change);
            blocking(move || {
                apply(&engine, change)?;
                get(&engine, kind, &name)
            })
            .await
        }
        "delete" => {
            let name = args.str(kind.key_field())?.to_owned();
            blocking(move || delete(&engine, kind, name)).await
        }
        _ => Err(AdminError::new(
            "unknown_command",
            format!(
                "`{}.{verb}` is not a command; {} takes list, get, put, delete",
                kind.name(),
                kind.name()
            ),
        )),
    }
}

/// Every stored object of `kind` as (name, JSON shown to clients); a
/// server also shows whether it is enabled and its `allocation`.
pub fn stored(engine: &Engine, kind: Kind) -> Result<Vec<(String, Value)>, AdminError> {
    let objects = engine
        .spool
        .objects(kind.name())
        .map_err(|e| AdminError::internal(format!("reading stored objects: {e}")))?;
    let objects = objects
        .into_iter()
        .filter_map(|(name, bytes)| {
            let value = serde_json::from_slice::<Value>(&bytes).ok()?;
            Some((name, hide_secrets(kind, value)))
        })
        .collect::<Vec<_>>();
    if kind != Kind::Server {
        return Ok(objects);
    }
    let groups = stored_groups(engine)?;
    Ok(objects
        .into_iter()
        .map(|(name, mut value)| {
            if let Some(server) = value.as_object_mut() {
                let enabled = server.get("enabled").and_then(Value::as_bool);
                server.insert("enabled".into(), enabled.unwrap_or(true).into());
                let allocation = allocation(&groups, &name, enabled != Some(false));
                server.insert("allocation".into(), json!(allocation));
            }
            (name, value)
        })
        .collect())
}

/// The stored user groups (every allocation, enabled servers or not).
fn stored_groups(engine: &Engine) -> Result<Vec<UserGroup>, AdminError> {
    let groups = engine
        .spool
        .objects(Kind::Group.name())
        .map_err(|e| AdminError::internal(format!("reading stored groups: {e}")))?;
    Ok(groups
        .into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice(&bytes).ok())
        .collect())
}

/// Which groups allocate `server`, and on which channels (Octeth's M / T
/// / AR badges). Without any group (single-tenant) every enabled server
/// is the `default` group's on every channel.
pub fn allocation(
    groups: &[UserGroup],
    server: &str,
    enabled: bool,
) -> BTreeMap<String, Vec<String>> {
    if groups.is_empty() {
        let all = CHANNELS.iter().map(|c| c.to_string()).collect();
        return match enabled {
            true => BTreeMap::from([("default".to_owned(), all)]),
            false => BTreeMap::new(),
        };
    }
    groups
        .iter()
        .filter_map(|g| {
            let channels: Vec<String> = CHANNELS
                .iter()
                .filter(|c| g.servers_for(c).iter().any(|s| s == server))
                .map(|c| c.to_string())
                .collect();
            (!channels.is_empty()).then(|| (g.name.clone(), channels))
        })
        .collect()
}

fn get(engine: &Engine, kind: Kind, name: &str) -> Result<Value, AdminError> {
    let wanted = match kind {
        Kind::Domain => name.to_ascii_lowercase(),
        _ => name.to_owned(),
    };
    stored(engine, kind)?
        .into_iter()
        .find(|(n, _)| *n == wanted)
        .map(|(_, v)| v)
        .ok_or_else(|| AdminError::not_found(format!("no {} is called `{name}`", kind.name())))
}

/// Replaces stored secrets with the placeholder.
fn hide_secrets(kind: Kind, mut value: Value) -> Value {
    match kind {
        Kind::Server => {
            if let Some(auth) = value.get_mut("auth").and_then(Value::as_object_mut)
                && auth.contains_key("password")
            {
                auth.insert("password".into(), SECRET_PLACEHOLDER.into());
            }
        }
        Kind::User => {
            if let Some(user) = value.as_object_mut() {
                let hash = user.remove("password_hash");
                if hash.is_some_and(|h| !h.is_null()) {
                    user.insert("password".into(), SECRET_PLACEHOLDER.into());
                }
                // API keys show their ids, never their hashes.
                if let Some(keys) = user.get_mut("api_keys").and_then(Value::as_array_mut) {
                    for key in keys.iter_mut().filter_map(Value::as_object_mut) {
                        key.remove("hash");
                    }
                }
            }
        }
        _ => {}
    }
    value
}

fn change_for_put(engine: &Engine, kind: Kind, args: &Args<'_>) -> Result<Change, AdminError> {
    Ok(match kind {
        Kind::Server => Change::PutServer(server_for_put(engine, args)?),
        Kind::Group => Change::PutGroup(args.object::<UserGroup>("group")?),
        Kind::User => Change::PutUser(args.object::<User>("user")?),
        Kind::Template => Change::PutTemplate(args.object::<DnsTemplate>("template")?),
        Kind::Domain => Change::PutDomain(domain_for_put(engine, args)?),
    })
}

/// What `server.get` shows but a put does not set: the daemon keeps them.
const SERVER_READ_ONLY: &[&str] = &["last_test", "allocation"];

/// The server to store: the fields given; `enabled` left out keeps the
/// stored setting, and a server new to the socket starts disabled; the
/// read-only fields (`get --json` output can be put back as it is) are
/// the stored ones.
fn server_for_put(engine: &Engine, args: &Args<'_>) -> Result<DeliveryServerSpec, AdminError> {
    let mut fields = args.0.clone();
    for read_only in SERVER_READ_ONLY {
        fields.remove(*read_only);
    }
    let mut spec = Args(&fields).object::<DeliveryServerSpec>("server")?;
    let stored = stored_server(engine, &spec.name)?;
    spec.enabled = spec
        .enabled
        .or(stored.as_ref().map(|s| s.enabled.unwrap_or(true)))
        .or(Some(false));
    spec.last_test = stored.and_then(|s| s.last_test);
    Ok(spec)
}

/// The server as stored (password sealed), if there is one.
pub fn stored_server(
    engine: &Engine,
    name: &str,
) -> Result<Option<DeliveryServerSpec>, AdminError> {
    let stored = engine
        .spool
        .objects(Kind::Server.name())
        .map_err(|e| AdminError::internal(format!("reading stored servers: {e}")))?
        .into_iter()
        .find(|(n, _)| n == name);
    stored
        .map(|(_, json)| {
            serde_json::from_slice(&json)
                .map_err(|e| AdminError::internal(format!("stored server `{name}`: {e}")))
        })
        .transpose()
}

/// `server.enable` / `server.disable`: whether groups send through it.
pub async fn set_enabled(
    ctx: &Arc<AdminContext>,
    args: &Args<'_>,
    enabled: bool,
) -> Result<Value, AdminError> {
    let name = args.str("name")?.to_owned();
    let engine = ctx.engine.clone();
    blocking(move || {
        let change = Change::EnableServer {
            name: name.clone(),
            enabled,
        };
        apply(&engine, change).map_err(|e| match e.code {
            "not_found" => AdminError::not_found(format!("no server is called `{name}`")),
            _ => e,
        })?;
        get(&engine, Kind::Server, &name)
    })
    .await
}

/// `{"domain", "owner"}`: the stored domain when it already has that
/// owner, otherwise a new one with records from the owner's template.
fn domain_for_put(engine: &Engine, args: &Args<'_>) -> Result<SenderDomain, AdminError> {
    let domain = args.str("domain")?.to_ascii_lowercase();
    if domain.starts_with('[') || !crate::values::mailbox::valid_domain(&domain) {
        return Err(AdminError::bad_args(format!(
            "domain: `{domain}` is not a host name (labels of letters, digits and `-`, joined by single dots)"
        )));
    }
    let owner = args.str("owner")?;
    if !engine.tenancy.snapshot().users.contains_key(owner) {
        return Err(AdminError::new(
            "invalid",
            format!("owner: no user is called `{owner}`"),
        ));
    }
    let existing = engine.tenancy.snapshot().domains.get(&domain).cloned();
    Ok(match existing {
        Some(d) if d.owner == owner => d,
        _ => engine.tenancy.new_domain(&domain, owner),
    })
}

fn put_name(change: &Change) -> String {
    match change {
        Change::PutServer(s) => s.name.clone(),
        Change::PutGroup(g) => g.name.clone(),
        Change::PutUser(u) => u.name.clone(),
        Change::PutTemplate(t) => t.name.clone(),
        Change::PutDomain(d) => d.domain.clone(),
        _ => String::new(),
    }
}

fn delete(engine: &Engine, kind: Kind, name: String) -> Result<Value, AdminError> {
    let change = match kind {
        Kind::Server => {
            refuse_if_used(engine, &name)?;
            Change::DeleteServer(name.clone())
        }
        Kind::Group => Change::DeleteGroup(name.clone()),
        Kind::User => Change::DeleteUser(name.clone()),
        Kind::Template => Change::DeleteTemplate(name.clone()),
        Kind::Domain => Change::DeleteDomain(name.clone()),
    };
    apply(engine, change)?;
    Ok(json!({"deleted": name}))
}

/// A server a group names cannot go; the error names every such group.
fn refuse_if_used(engine: &Engine, server: &str) -> Result<(), AdminError> {
    let groups = stored_groups(engine)?;
    if groups.is_empty() {
        return Ok(());
    }
    let users: Vec<String> = allocation(&groups, server, true).into_keys().collect();
    if users.is_empty() {
        return Ok(());
    }
    Err(AdminError::new(
        "in_use",
        format!(
            "server `{server}` is used by group(s) {}; remove it from them first",
            users.join(", ")
        ),
    ))
}

/// `Engine::change`, with its refusal turned into an error for the client.
pub fn apply(engine: &Engine, change: Change) -> Result<(), AdminError> {
    engine.change(change).map_err(|e| match &e {
        TenancyError::Invalid { message, .. } if message == "no such object" => {
            AdminError::not_found(e.to_string())
        }
        TenancyError::Invalid { .. } => AdminError::new("invalid", e.to_string()),
        TenancyError::Cluster(_) => AdminError::new("cluster_unavailable", e.to_string()),
        TenancyError::Changed { .. } => AdminError::new("conflict", format!("{e}: try again")),
        _ => AdminError::internal(e.to_string()),
    })
}

/// Looks the domain's records up in DNS, stores the result, returns it.
pub async fn verify_domain(ctx: &Arc<AdminContext>, args: &Args<'_>) -> Result<Value, AdminError> {
    let name = args.str("domain")?.to_ascii_lowercase();
    let engine = ctx.engine.clone();
    let Some(seen) = engine.tenancy.snapshot().domains.get(&name).cloned() else {
        return Err(AdminError::not_found(format!(
            "no domain is called `{name}`"
        )));
    };
    let mut verified = seen.clone();
    crate::domains::verify(&engine.resolver, &mut verified, crate::timefmt::now_ms()).await;
    let shown = serde_json::to_value(&verified).unwrap_or(Value::Null);
    let change = Change::VerifiedDomain { seen, verified };
    blocking(move || apply(&engine, change))
        .await
        .map_err(|e| match e.code {
            "conflict" => AdminError::new(
                "conflict",
                format!(
                    "domain `{name}` changed while its records were looked up, and this \
                     verification was not stored: run `sendctl domain verify {name}` again"
                ),
            ),
            _ => e,
        })?;
    Ok(shown)
}

/// The records to publish for a domain, as zone-file lines.
pub async fn domain_records(ctx: &Arc<AdminContext>, args: &Args<'_>) -> Result<Value, AdminError> {
    let name = args.str("domain")?.to_ascii_lowercase();
    let snapshot = ctx.engine.tenancy.snapshot();
    let dkim = super::dkim::zone_lines(&snapshot, &name);
    let records = match snapshot.domains.get(&name) {
        Some(domain) => domain.records.clone(),
        None if !dkim.is_empty() => Vec::new(),
        None => {
            return Err(AdminError::not_found(format!(
                "no domain is called `{name}`"
            )));
        }
    };
    let mut lines: Vec<String> = records
        .iter()
        .map(|r| {
            let data = match r.kind {
                RecordKind::Txt => txt_data(&r.value),
                RecordKind::Cname => format!("{}.", r.value),
                RecordKind::Mx => format!("{} {}.", r.priority.unwrap_or(10), r.value),
                RecordKind::A => r.value.clone(),
            };
            format!("{}.\t3600\tIN\t{}\t{data}", r.name, r.kind)
        })
        .collect();
    // The DKIM keys' records go with the domain's own.
    lines.extend(dkim);
    Ok(json!({"domain": name, "zone": lines}))
}

/// A TXT value in zone-file form: quoted, split into 255-byte strings.
fn txt_data(value: &str) -> String {
    let escaped = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return "\"\"".into();
    }
    bytes
        .chunks(255)
        .map(|chunk| format!("\"{}\"", escaped(&String::from_utf8_lossy(chunk))))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_hidden() {
        let server = json!({"name": "a", "auth": {"username": "u", "password": "sealed:v1:x"}});
        let shown = hide_secrets(Kind::Server, server);
        assert_eq!(shown["auth"]["password"], "(set)");
        let user = json!({"name": "u", "password_hash": "$pbkdf2$..."});
        let shown = hide_secrets(Kind::User, user);
        assert_eq!(shown["password"], "(set)");
        assert!(shown.get("password_hash").is_none());
    }

    #[test]
    fn long_txt_values_are_split() {
        let value = "v".repeat(300);
        let data = txt_data(&value);
        assert_eq!(data.matches('"').count(), 4, "{data}");
    }
}
