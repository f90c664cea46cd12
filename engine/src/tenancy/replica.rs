//! Tenancy in a fleet: the two hooks cluster mode needs, kept apart from
//! the standalone store.
//!
//! - A [`Publish`]er, when set, commits every change fleet-wide after it
//!   was validated here and before it is stored here: if it fails, the
//!   change is applied nowhere (`TenancyStore::apply`).
//! - [`TenancyStore::apply_replicated`] takes objects another node
//!   committed, as stored (secrets sealed with the fleet's master key), and
//!   applies the whole set at once: a user may arrive before its group, so
//!   the set is checked once, after every row is in place.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::{DKIM, DOMAIN, GROUP, Objects, SERVER, TEMPLATE, TenancyError, TenancyStore, USER};

/// Every kind of object, in the order they depend on each other.
pub const KINDS: [&str; 6] = [SERVER, TEMPLATE, GROUP, USER, DOMAIN, DKIM];

/// Commits one object write fleet-wide, before the node stores it.
pub trait Publish: Send + Sync {
    /// `body` is the object as stored (JSON, secrets sealed); `None`
    /// deletes it. An error is the sentence the operator sees.
    fn publish(&self, kind: &str, name: &str, body: Option<&[u8]>) -> Result<(), String>;
}

/// One object as stored; `body: None` is a deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRow {
    pub kind: String,
    pub name: String,
    pub body: Option<Vec<u8>>,
}

type Raw = BTreeMap<(String, String), Vec<u8>>;

impl TenancyStore {
    /// From now on every change is published first (cluster mode).
    pub fn set_publisher(&self, publisher: Arc<dyn Publish>) {
        let _ = self.publisher.set(publisher);
    }

    pub(super) fn publish(
        &self,
        kind: &str,
        name: &str,
        body: Option<&[u8]>,
    ) -> Result<(), TenancyError> {
        match self.publisher.get() {
            Some(p) => p.publish(kind, name, body).map_err(TenancyError::Cluster),
            None => Ok(()),
        }
    }

    /// Every stored object (what a first node gives an empty fleet).
    pub fn stored_rows(&self) -> Result<Vec<ObjectRow>, TenancyError> {
        Ok(self
            .load_raw()?
            .into_iter()
            .map(|((kind, name), body)| ObjectRow {
                kind,
                name,
                body: Some(body),
            })
            .collect())
    }

    /// Applies objects committed elsewhere, without publishing them again.
    /// With `replace_all`, `rows` is the whole set: objects it lacks are
    /// deleted here. Returns how many stored objects changed; nothing
    /// changes if the resulting set does not fit together.
    pub fn apply_replicated(
        &self,
        rows: &[ObjectRow],
        replace_all: bool,
    ) -> Result<usize, TenancyError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.load_raw()?;
        let new = merged(&old, rows, replace_all);
        let objects = parse_objects(&new)?;
        let tenancy = self.build(&objects)?;
        let mut changed = 0;
        for (key, body) in &new {
            if old.get(key) != Some(body) {
                self.spool.put_object(&key.0, &key.1, body.clone())?;
                changed += 1;
            }
        }
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            self.spool.delete_object(&key.0, &key.1)?;
            changed += 1;
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenancy);
        Ok(changed)
    }

    fn load_raw(&self) -> Result<Raw, TenancyError> {
        let mut raw = Raw::new();
        for kind in KINDS {
            for (name, body) in self.spool.objects(kind)? {
                raw.insert((kind.to_owned(), name), body);
            }
        }
        Ok(raw)
    }
}

/// `old` with `rows` written over it (and only `rows` when `replace_all`).
/// Rows of a kind this version does not know are left out, with a warning.
fn merged(old: &Raw, rows: &[ObjectRow], replace_all: bool) -> Raw {
    let mut new = if replace_all { Raw::new() } else { old.clone() };
    for row in rows {
        if !KINDS.contains(&row.kind.as_str()) {
            log::warn!(
                "cluster: ignoring shared object {} `{}`: this version has no such kind",
                row.kind,
                row.name
            );
            continue;
        }
        let key = (row.kind.clone(), row.name.clone());
        match &row.body {
            Some(body) => new.insert(key, body.clone()),
            None => new.remove(&key),
        };
    }
    new
}

fn parse_objects(raw: &Raw) -> Result<Objects, TenancyError> {
    Ok(Objects {
        servers: super::with_timeout_units(parse_kind(raw, SERVER)?),
        groups: parse_kind(raw, GROUP)?,
        users: parse_kind(raw, USER)?,
        templates: parse_kind(raw, TEMPLATE)?,
        domains: parse_kind(raw, DOMAIN)?,
        dkim: parse_kind(raw, DKIM)?,
    })
}

fn parse_kind<T: DeserializeOwned>(
    raw: &Raw,
    kind: &'static str,
) -> Result<BTreeMap<String, T>, TenancyError> {
    raw.iter()
        .filter(|((k, _), _)| k == kind)
        .map(|((_, name), body)| {
            serde_json::from_slice(body)
                .map(|v| (name.clone(), v))
                .map_err(|e| TenancyError::Corrupt {
                    kind,
                    name: name.clone(),
                    message: e.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secrets;
    use crate::tenancy::Seeds;
    use sendengine_queue::{Spool, SpoolConfig};

    const G: &str = r#"{"name":"g","marketing":["s"],"transactional":["s"],"autoresponder":["s"]}"#;

    fn row(kind: &str, name: &str, body: Option<&str>) -> ObjectRow {
        ObjectRow {
            kind: kind.into(),
            name: name.into(),
            body: body.map(|b| b.as_bytes().to_vec()),
        }
    }

    fn store(dir: &std::path::Path) -> TenancyStore {
        let spool = Spool::open(SpoolConfig::new(dir)).unwrap();
        TenancyStore::open(spool, Secrets::from_key([7; 32]), &Seeds::default()).unwrap()
    }

    #[test]
    fn a_user_may_arrive_before_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let rows = [
            row(USER, "alice", Some(r#"{"name":"alice","group":"g"}"#)),
            row(SERVER, "s", Some(r#"{"name":"s","host":"127.0.0.1"}"#)),
            row(GROUP, "g", Some(G)),
        ];
        assert_eq!(store.apply_replicated(&rows, false).unwrap(), 3);
        let snapshot = store.snapshot();
        assert_eq!(snapshot.users["alice"].group, "g");
        assert!(snapshot.server("s").is_some());
        // The same rows again change nothing on disk.
        assert_eq!(store.apply_replicated(&rows, false).unwrap(), 0);
    }

    #[test]
    fn a_set_that_does_not_fit_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let server = row(SERVER, "s", Some(r#"{"name":"s","host":"127.0.0.1"}"#));
        store.apply_replicated(&[server], false).unwrap();
        let orphan = row(GROUP, "g", Some(r#"{"name":"g","marketing":["nowhere"]}"#));
        assert!(store.apply_replicated(&[orphan], false).is_err());
        assert!(store.snapshot().groups.is_empty());
        assert_eq!(store.stored_rows().unwrap().len(), 1);
    }

    #[test]
    fn replace_all_deletes_what_the_set_lacks_and_deletions_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let a = row(SERVER, "a", Some(r#"{"name":"a","host":"127.0.0.1"}"#));
        let b = row(SERVER, "b", Some(r#"{"name":"b","host":"127.0.0.2"}"#));
        store.apply_replicated(&[a.clone(), b], false).unwrap();
        store.apply_replicated(&[a], true).unwrap();
        assert_eq!(store.stored_rows().unwrap().len(), 1);
        store
            .apply_replicated(
                &[row(SERVER, "a", None), row("unknown", "x", Some("{}"))],
                false,
            )
            .unwrap();
        assert!(store.stored_rows().unwrap().is_empty());
        assert!(store.snapshot().servers.is_empty());
    }

    struct Refuse;
    impl Publish for Refuse {
        fn publish(&self, _: &str, _: &str, _: Option<&[u8]>) -> Result<(), String> {
            Err("the cluster database is unreachable".into())
        }
    }

    #[test]
    fn a_change_the_fleet_refuses_is_not_applied_here() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.set_publisher(Arc::new(Refuse));
        let user: crate::tenancy::User =
            serde_json::from_str(r#"{"name":"alice","group":"default"}"#).unwrap();
        let e = store
            .apply(crate::tenancy::Change::PutUser(user))
            .unwrap_err();
        assert!(e.to_string().contains("unreachable"), "{e}");
        assert!(store.snapshot().users.is_empty());
        assert!(store.stored_rows().unwrap().is_empty());
    }
}
