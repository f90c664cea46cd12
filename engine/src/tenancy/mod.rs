//! Tenancy: the operator's objects, kept in the spool's object table and
//! served to the rest of the daemon as an immutable snapshot.
//!
//! `TenancyStore::open` writes the seeds of `config.toml` over the stored
//! objects of the same names (the file wins for what it names; objects
//! pushed later through the admin socket stay), then builds the first
//! `Tenancy`. A change validates the whole new set before it is stored and
//! swapped in; work in flight keeps the snapshot it started with.

pub mod api_keys;
pub mod dkim;
pub mod model;
pub mod replica;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use sendengine_queue::Spool;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use model::{AuthSpec, CHANNELS, DIRECT, DeliveryServer, DeliveryServerSpec, User, UserGroup};

use crate::domains::{DnsTemplate, SenderDomain};
use crate::secrets::{self, Secrets};

const SERVER: &str = "server";
const GROUP: &str = "group";
const USER: &str = "user";
const TEMPLATE: &str = "template";
const DOMAIN: &str = "domain";
const DKIM: &str = "dkim";

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error("{kind} `{name}`: {message}")]
    Invalid {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("stored {kind} `{name}` cannot be read: {message}")]
    Corrupt {
        kind: &'static str,
        name: String,
        message: String,
    },
    #[error("spool: {0}")]
    Spool(#[from] sendengine_queue::SpoolError),
    /// Cluster mode: the fleet did not take the change (nothing changed).
    #[error("{0}")]
    Cluster(String),
    /// The object changed after the change was prepared from it (nothing
    /// changed): prepare it again from the object as it is now.
    #[error("{kind} `{name}` changed meanwhile")]
    Changed { kind: &'static str, name: String },
}

/// What `config.toml` declares.
#[derive(Debug, Clone, Default)]
pub struct Seeds {
    pub servers: Vec<DeliveryServerSpec>,
    pub groups: Vec<UserGroup>,
    pub users: Vec<User>,
    pub templates: Vec<DnsTemplate>,
    /// (domain, owner): created from the owner's group template if missing.
    pub domains: Vec<(String, String)>,
    pub dkim_keys: Vec<dkim::DkimKeySeed>,
}

/// One consistent view of every object.
#[derive(Debug, Default)]
pub struct Tenancy {
    /// In the order they were declared (names sort the stored ones).
    pub servers: Vec<Arc<DeliveryServer>>,
    pub groups: HashMap<String, Arc<UserGroup>>,
    pub users: HashMap<String, Arc<User>>,
    pub templates: HashMap<String, DnsTemplate>,
    /// By domain name.
    pub domains: HashMap<String, SenderDomain>,
    /// DKIM keys by domain, as stored (keys sealed).
    pub dkim: HashMap<String, dkim::DkimDomain>,
    /// Signers and DNS records by domain, built from `dkim`.
    pub signing: HashMap<String, dkim::DomainSigning>,
    /// Only when no group is declared: every enabled server, no limits.
    /// Once a group exists this is `None`, and a server no group lists is
    /// unused. The groups here list only enabled servers (the stored ones
    /// keep every allocation, see `allocation`).
    single_tenant_group: Option<Arc<UserGroup>>,
    /// The groups as stored, disabled servers listed too (by name; the
    /// single-tenant group as "default").
    stored_groups: HashMap<String, Arc<UserGroup>>,
    /// API key id -> (user, hash of the secret).
    api_keys: HashMap<String, (String, String)>,
}

impl Tenancy {
    /// The user an HTTP API token belongs to, if it is a valid key.
    pub fn api_key_user(&self, token: &str) -> Option<&str> {
        let (id, secret) = api_keys::split_token(token)?;
        let (user, hash) = self.api_keys.get(id)?;
        api_keys::verify(hash, secret).then_some(user.as_str())
    }

    pub fn server(&self, name: &str) -> Option<&Arc<DeliveryServer>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The group of `user`'s mail. With groups declared every message
    /// needs a tenant in one of them: `None` for no user, or a user whose
    /// group does not exist. Without any group (single-tenant, as in the
    /// quick start) every message goes through the group of all servers.
    pub fn group_of(&self, user: Option<&User>) -> Option<&Arc<UserGroup>> {
        if let Some(all) = &self.single_tenant_group {
            return Some(all);
        }
        self.groups.get(user?.group.as_str())
    }

    /// The group called `name`, by which a queued message is routed.
    pub fn group(&self, name: &str) -> Option<&Arc<UserGroup>> {
        self.single_tenant_group
            .as_ref()
            .or_else(|| self.groups.get(name))
    }

    /// The delivery server mail of `group` on `channel` is decided for at
    /// admission (transforms, VERP domain, tracking): the first enabled one
    /// its list names, if that is a server. The route is known at admission
    /// only as that list, in failover order: the message is transformed and
    /// signed once, and a failover server sends the same bytes, with the
    /// first server's From (README, "From rewrites and DKIM"). While no
    /// server of the list is enabled, the first one listed: the mail waits
    /// for it, and leaves as that server sends once it is enabled again.
    pub fn primary_server(&self, group: &UserGroup, channel: &str) -> Option<&DeliveryServer> {
        let routed = group.servers_for(channel);
        let list = match self.stored_groups.get(&group.name) {
            Some(stored) if routed.is_empty() => stored.servers_for(channel),
            _ => routed,
        };
        list.first()
            .and_then(|name| self.server(name))
            .map(|s| s.as_ref())
    }

    /// Enabled sender domains of `user`.
    pub fn domain_of(&self, user: &str, domain: &str) -> Option<&SenderDomain> {
        self.domains
            .get(&domain.to_ascii_lowercase())
            .filter(|d| d.owner == user)
    }
}

pub struct TenancyStore {
    spool: Spool,
    secrets: Secrets,
    current: RwLock<Arc<Tenancy>>,
    /// One change at a time: each is validated against the whole set.
    changing: Mutex<()>,
    /// Users whose password was checked: name -> SHA-256(hash | password).
    verified: Mutex<HashMap<String, [u8; 32]>>,
    /// Cluster mode: commits each change fleet-wide first (`replica`).
    publisher: OnceLock<Arc<dyn replica::Publish>>,
}

/// Every stored object, as stored (secrets sealed or hashed).
#[derive(Debug, Clone, Default)]
struct Objects {
    servers: BTreeMap<String, DeliveryServerSpec>,
    groups: BTreeMap<String, UserGroup>,
    users: BTreeMap<String, User>,
    templates: BTreeMap<String, DnsTemplate>,
    domains: BTreeMap<String, SenderDomain>,
    dkim: BTreeMap<String, dkim::DkimDomain>,
}

/// One change to the objects, as the admin socket or the seeds ask it.
#[derive(Debug, Clone)]
pub enum Change {
    PutServer(DeliveryServerSpec),
    /// `sendctl server enable|disable`, staged on the server as it is
    /// under the change lock, so that a put meanwhile is not written over.
    EnableServer {
        name: String,
        enabled: bool,
    },
    /// What `sendctl server test` found, kept on the server only if it is
    /// still `seen` (its last test aside), as the test began: a server put
    /// again meanwhile (another host, port or password) was not what was
    /// tested.
    ServerTested {
        seen: DeliveryServerSpec,
        result: model::ServerTest,
    },
    DeleteServer(String),
    PutGroup(UserGroup),
    DeleteGroup(String),
    PutUser(User),
    DeleteUser(String),
    /// Adds an API key to a user's (`sendctl user api-key create`). A change
    /// of one key, not of the list: it is staged on the objects as they are
    /// under the change lock, so a key added meanwhile (on this node, or
    /// replicated from another) is never written over.
    AddApiKey {
        user: String,
        key: api_keys::ApiKey,
    },
    /// Removes one of a user's API keys (`sendctl user api-key revoke`).
    RevokeApiKey {
        user: String,
        id: String,
    },
    PutTemplate(DnsTemplate),
    DeleteTemplate(String),
    PutDomain(SenderDomain),
    /// A domain as DNS verification left it (`domains::verify`), stored
    /// only if the domain is still `seen`, as the lookups began: they take
    /// seconds, and a domain put again, moved to another owner or deleted
    /// meanwhile must not come back as it was.
    VerifiedDomain {
        seen: SenderDomain,
        verified: SenderDomain,
    },
    DeleteDomain(String),
    PutDkim(dkim::DkimDomain),
    /// One edit of a domain's DKIM keys (`sendctl dkim generate|import|
    /// activate|retire`), staged on the keys as they are under the change
    /// lock, as `AddApiKey` is.
    EditDkim {
        domain: String,
        edit: dkim::KeyEdit,
    },
    DeleteDkim(String),
}

/// What a read shows in place of a secret.
pub const SECRET_PLACEHOLDER: &str = "(set)";

impl TenancyStore {
    pub fn open(
        spool: Spool,
        secrets: Secrets,
        seeds: &Seeds,
    ) -> Result<TenancyStore, TenancyError> {
        let store = TenancyStore {
            spool,
            secrets,
            current: RwLock::new(Arc::new(Tenancy::default())),
            changing: Mutex::new(()),
            verified: Mutex::new(HashMap::new()),
            publisher: OnceLock::new(),
        };
        let objects = store.load_objects()?;
        let tenancy = store.build(&objects)?;
        *store.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenancy);
        store.apply_seeds(seeds)?;
        Ok(store)
    }

    pub fn snapshot(&self) -> Arc<Tenancy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Seeds in dependency order: a group names servers, a user a group.
    fn apply_seeds(&self, seeds: &Seeds) -> Result<(), TenancyError> {
        let stored = self.snapshot();
        let changes = seeds
            .servers
            .iter()
            .cloned()
            .map(|mut server| {
                // The file enables what it declares, unless an operator
                // has disabled the server since (`server disable`).
                let was = stored.server(&server.name).map(|s| s.enabled);
                server.enabled = server.enabled.or(was).or(Some(true));
                Change::PutServer(server)
            })
            .chain(seeds.templates.iter().cloned().map(Change::PutTemplate))
            .chain(seeds.groups.iter().cloned().map(Change::PutGroup))
            .chain(seeds.users.iter().cloned().map(Change::PutUser));
        for change in changes {
            self.apply(change)?;
        }
        for seed in &seeds.dkim_keys {
            self.seed_dkim_key(seed)?;
        }
        for (domain, owner) in &seeds.domains {
            let exists = self
                .snapshot()
                .domains
                .get(&domain.to_ascii_lowercase())
                .is_some_and(|d| &d.owner == owner);
            if !exists {
                let created = self.new_domain(domain, owner);
                self.apply(Change::PutDomain(created))?;
            }
        }
        Ok(())
    }

    /// Adds a seeded DKIM key unless its domain already has that selector.
    fn seed_dkim_key(&self, seed: &dkim::DkimKeySeed) -> Result<(), TenancyError> {
        let domain = seed.domain.to_ascii_lowercase();
        let selector = seed.selector();
        let mut keys = self
            .snapshot()
            .dkim
            .get(&domain)
            .cloned()
            .unwrap_or(dkim::DkimDomain {
                domain: domain.clone(),
                keys: Vec::new(),
            });
        if keys.keys.iter().any(|k| k.selector == selector) {
            return Ok(());
        }
        let private_key = seed
            .private_key_pem()
            .map_err(|message| TenancyError::Invalid {
                kind: DKIM,
                name: domain.clone(),
                message,
            })?;
        keys.keys.push(dkim::StoredKey {
            selector,
            private_key,
            active: true,
        });
        self.apply(Change::PutDkim(keys))
    }

    /// A new sender domain of `owner`, its records drawn from the owner's
    /// group template (none: enabled at once).
    pub fn new_domain(&self, domain: &str, owner: &str) -> SenderDomain {
        let snapshot = self.snapshot();
        let group = snapshot.group_of(snapshot.users.get(owner).map(|u| u.as_ref()));
        let empty = DnsTemplate {
            name: String::new(),
            records: Vec::new(),
        };
        let template = group
            .and_then(|g| g.dns_template.as_ref())
            .and_then(|t| snapshot.templates.get(t))
            .unwrap_or(&empty);
        let settings = group.map(|g| g.domain_settings.clone()).unwrap_or_default();
        SenderDomain::new(
            &domain.to_ascii_lowercase(),
            owner,
            template,
            &settings,
            &self.secrets.derived("domain-hash"),
            crate::timefmt::now_ms(),
        )
    }

    /// Applies one change: checked together with every other object, then
    /// (cluster mode) committed fleet-wide, then stored and made current.
    /// Nothing changes if it does not fit or the fleet does not take it.
    pub fn apply(&self, change: Change) -> Result<(), TenancyError> {
        let _one_at_a_time = self.changing.lock().unwrap_or_else(|p| p.into_inner());
        let mut objects = self.load_objects()?;
        let write = self.stage(&mut objects, change)?;
        let tenancy = self.build(&objects)?;
        self.publish(write.0, &write.1, write.2.as_deref())?;
        match write {
            (kind, name, Some(json)) => {
                self.spool.put_object(kind, &name, json)?;
            }
            (kind, name, None) => {
                self.spool.delete_object(kind, &name)?;
            }
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenancy);
        Ok(())
    }

    /// Applies `change` to `objects` in memory; returns the write to make.
    fn stage(
        &self,
        objects: &mut Objects,
        change: Change,
    ) -> Result<(&'static str, String, Option<Vec<u8>>), TenancyError> {
        fn json<T: Serialize>(v: &T) -> Option<Vec<u8>> {
            serde_json::to_vec(v).ok()
        }
        let missing = |kind: &'static str, name: &str| TenancyError::Invalid {
            kind,
            name: name.to_owned(),
            message: "no such object".into(),
        };
        Ok(match change {
            Change::PutServer(mut spec) => {
                if let Some(given) = spec.auth.as_ref().map(|a| a.password.clone()) {
                    let sealed = self.stored_password(objects, &spec, &given)?;
                    if let Some(auth) = spec.auth.as_mut() {
                        auth.password = sealed;
                    }
                }
                let out = (SERVER, spec.name.clone(), json(&spec));
                objects.servers.insert(spec.name.clone(), spec);
                out
            }
            Change::EnableServer { name, enabled } => {
                let spec = objects
                    .servers
                    .get_mut(&name)
                    .ok_or_else(|| missing(SERVER, &name))?;
                spec.enabled = Some(enabled);
                (SERVER, name, json(spec))
            }
            Change::ServerTested { seen, result } => {
                let untested = |s: &DeliveryServerSpec| DeliveryServerSpec {
                    last_test: None,
                    ..s.clone()
                };
                let spec = objects
                    .servers
                    .get_mut(&seen.name)
                    .filter(|now| untested(now) == untested(&seen))
                    .ok_or_else(|| TenancyError::Changed {
                        kind: SERVER,
                        name: seen.name.clone(),
                    })?;
                spec.last_test = Some(result);
                (SERVER, seen.name, json(spec))
            }
            Change::DeleteServer(name) => {
                objects
                    .servers
                    .remove(&name)
                    .ok_or_else(|| missing(SERVER, &name))?;
                (SERVER, name, None)
            }
            Change::PutGroup(group) => {
                let out = (GROUP, group.name.clone(), json(&group));
                objects.groups.insert(group.name.clone(), group);
                out
            }
            Change::DeleteGroup(name) => {
                objects
                    .groups
                    .remove(&name)
                    .ok_or_else(|| missing(GROUP, &name))?;
                (GROUP, name, None)
            }
            Change::PutUser(mut user) => {
                let old = objects.users.get(&user.name);
                let old_hash = old.and_then(|u| u.password_hash.clone());
                // Keys change only through `AddApiKey` and `RevokeApiKey`: a put (or a seed
                // at start) keeps them.
                user.api_keys = old.map(|u| u.api_keys.clone()).unwrap_or_default();
                user.password_hash = match user.password.take() {
                    Some(p) if secrets::is_password_hash(&p) => Some(p),
                    Some(p) if p != SECRET_PLACEHOLDER => Some(secrets::hash_password(&p)),
                    _ => user
                        .password_hash
                        .clone()
                        .filter(|h| h != SECRET_PLACEHOLDER)
                        .or(old_hash),
                };
                let out = (USER, user.name.clone(), json(&user));
                objects.users.insert(user.name.clone(), user);
                out
            }
            Change::DeleteUser(name) => {
                objects
                    .users
                    .remove(&name)
                    .ok_or_else(|| missing(USER, &name))?;
                (USER, name, None)
            }
            Change::AddApiKey { user, key } => {
                let stored = objects
                    .users
                    .get_mut(&user)
                    .ok_or_else(|| missing(USER, &user))?;
                if stored.api_keys.len() >= api_keys::MAX_KEYS_PER_USER {
                    return Err(TenancyError::Invalid {
                        kind: USER,
                        name: user,
                        message: format!(
                            "it has {} API keys already: revoke one first",
                            api_keys::MAX_KEYS_PER_USER
                        ),
                    });
                }
                stored.api_keys.push(key);
                (USER, user, json(&*stored))
            }
            Change::RevokeApiKey { user, id } => {
                let stored = objects
                    .users
                    .get_mut(&user)
                    .ok_or_else(|| missing(USER, &user))?;
                let before = stored.api_keys.len();
                stored.api_keys.retain(|k| k.id != id);
                if stored.api_keys.len() == before {
                    return Err(missing("API key", &id));
                }
                (USER, user, json(&*stored))
            }
            Change::PutTemplate(template) => {
                let out = (TEMPLATE, template.name.clone(), json(&template));
                objects.templates.insert(template.name.clone(), template);
                out
            }
            Change::DeleteTemplate(name) => {
                objects
                    .templates
                    .remove(&name)
                    .ok_or_else(|| missing(TEMPLATE, &name))?;
                (TEMPLATE, name, None)
            }
            Change::PutDomain(domain) => {
                let out = (DOMAIN, domain.domain.clone(), json(&domain));
                objects.domains.insert(domain.domain.clone(), domain);
                out
            }
            Change::VerifiedDomain { seen, verified } => {
                if objects.domains.get(&seen.domain) != Some(&seen) {
                    return Err(TenancyError::Changed {
                        kind: DOMAIN,
                        name: seen.domain,
                    });
                }
                let out = (DOMAIN, seen.domain.clone(), json(&verified));
                objects.domains.insert(seen.domain, verified);
                out
            }
            Change::DeleteDomain(name) => {
                let name = name.to_ascii_lowercase();
                objects
                    .domains
                    .remove(&name)
                    .ok_or_else(|| missing(DOMAIN, &name))?;
                (DOMAIN, name, None)
            }
            Change::PutDkim(keys) => {
                let keys = keys.sealed(&self.secrets);
                let out = (DKIM, keys.domain.clone(), json(&keys));
                objects.dkim.insert(keys.domain.clone(), keys);
                out
            }
            Change::EditDkim { domain, edit } => {
                let domain = domain.to_ascii_lowercase();
                let mut keys = (objects.dkim.get(&domain).cloned()).unwrap_or(dkim::DkimDomain {
                    domain: domain.clone(),
                    keys: Vec::new(),
                });
                edit.apply(&mut keys)
                    .map_err(|message| TenancyError::Invalid {
                        kind: DKIM,
                        name: domain.clone(),
                        message,
                    })?;
                let keys = keys.sealed(&self.secrets);
                let out = (DKIM, domain.clone(), json(&keys));
                objects.dkim.insert(domain, keys);
                out
            }
            Change::DeleteDkim(name) => {
                let name = name.to_ascii_lowercase();
                objects
                    .dkim
                    .remove(&name)
                    .ok_or_else(|| missing(DKIM, &name))?;
                (DKIM, name, None)
            }
        })
    }

    /// The sealed relay password to store: a new one sealed, or the stored
    /// one kept when the request shows only the placeholder (or the sealed
    /// value itself). A stored password is kept only for the endpoint it
    /// was given for: pointing the server elsewhere with `(set)` would send
    /// the real password to the new host (issue 15.7).
    fn stored_password(
        &self,
        objects: &Objects,
        spec: &DeliveryServerSpec,
        given: &str,
    ) -> Result<String, TenancyError> {
        let stored = objects.servers.get(&spec.name);
        let stored_password = stored.and_then(|s| s.auth.as_ref()).map(|a| &a.password);
        let keeps_stored =
            given == SECRET_PLACEHOLDER || stored_password.is_some_and(|p| p == given);
        if !keeps_stored {
            return Ok(if Secrets::is_sealed(given) {
                given.to_owned()
            } else {
                self.secrets.seal(given)
            });
        }
        let refuse = |message: String| TenancyError::Invalid {
            kind: SERVER,
            name: spec.name.clone(),
            message,
        };
        let (Some(old), Some(password)) = (stored, stored_password) else {
            return Err(refuse(format!(
                "auth.password: `{SECRET_PLACEHOLDER}` keeps a stored password, and this server has none; give the password"
            )));
        };
        if let Some(change) = endpoint_change(old, spec) {
            return Err(refuse(format!(
                "auth.password: the stored password is kept only while host, port, username and TLS settings stay the same, and {change}; give the password again"
            )));
        }
        Ok(password.clone())
    }

    fn load_kind<T: DeserializeOwned>(
        &self,
        kind: &'static str,
    ) -> Result<BTreeMap<String, T>, TenancyError> {
        self.spool
            .objects(kind)?
            .into_iter()
            .map(|(name, json)| {
                serde_json::from_slice(&json)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| TenancyError::Corrupt {
                        kind,
                        name,
                        message: e.to_string(),
                    })
            })
            .collect()
    }

    fn load_objects(&self) -> Result<Objects, TenancyError> {
        Ok(Objects {
            servers: with_timeout_units(self.load_kind(SERVER)?),
            groups: self.load_kind(GROUP)?,
            users: self.load_kind(USER)?,
            templates: self.load_kind(TEMPLATE)?,
            domains: self.load_kind(DOMAIN)?,
            dkim: self.load_kind(DKIM)?,
        })
    }

    /// Checks that the objects fit together and makes the snapshot.
    fn build(&self, objects: &Objects) -> Result<Tenancy, TenancyError> {
        let invalid = |kind: &'static str, name: &str, message: String| TenancyError::Invalid {
            kind,
            name: name.to_owned(),
            message,
        };
        let mut servers = Vec::new();
        for (name, spec) in &objects.servers {
            let password = match &spec.auth {
                Some(a) => Some(
                    self.secrets
                        .open(&a.password)
                        .map_err(|e| invalid(SERVER, name, e.to_string()))?,
                ),
                None => None,
            };
            let server = spec
                .validate(password)
                .map_err(|message| invalid(SERVER, name, message))?;
            servers.push(Arc::new(server));
        }
        let names: Vec<&String> = objects.servers.keys().collect();
        let enabled: Vec<String> = servers
            .iter()
            .filter(|s| s.enabled)
            .map(|s| s.name.clone())
            .collect();
        let mut tenancy = Tenancy {
            servers,
            ..Tenancy::default()
        };
        for (name, group) in &objects.groups {
            group
                .validate(|s| s == DIRECT || names.iter().any(|n| *n == s))
                .map_err(|message| invalid(GROUP, name, message))?;
            if let Some(t) = &group.dns_template
                && !objects.templates.contains_key(t)
            {
                return Err(invalid(
                    GROUP,
                    name,
                    format!("dns_template: no template is called `{t}`"),
                ));
            }
            let routed = group.with_servers_only(|s| s == DIRECT || enabled.iter().any(|e| e == s));
            tenancy.groups.insert(name.clone(), Arc::new(routed));
            tenancy
                .stored_groups
                .insert(name.clone(), Arc::new(group.clone()));
        }
        if tenancy.groups.is_empty() {
            tenancy.single_tenant_group = Some(Arc::new(UserGroup::single_tenant(&enabled)));
            let every: Vec<String> = tenancy.servers.iter().map(|s| s.name.clone()).collect();
            let stored = UserGroup::single_tenant(&every);
            tenancy
                .stored_groups
                .insert(stored.name.clone(), Arc::new(stored));
        }
        for (name, user) in &objects.users {
            user.validate()
                .map_err(|message| invalid(USER, name, message))?;
            if let Some(message) = missing_group(user, &objects.groups) {
                return Err(invalid(USER, name, message));
            }
            for key in &user.api_keys {
                tenancy
                    .api_keys
                    .insert(key.id.clone(), (name.clone(), key.hash.clone()));
            }
            tenancy.users.insert(name.clone(), Arc::new(user.clone()));
        }
        tenancy.templates = objects.templates.clone().into_iter().collect();
        check_domain_limits(objects, &tenancy)?;
        tenancy.domains = objects.domains.clone().into_iter().collect();
        // Under `changing`, the current snapshot is the one this replaces:
        // its signers are reused for every key that did not change.
        let previous = self.snapshot();
        for (name, keys) in &objects.dkim {
            let signing = keys
                .build(&self.secrets, previous.signing.get(name))
                .map_err(|message| invalid(DKIM, name, message))?;
            tenancy.signing.insert(name.clone(), signing);
        }
        tenancy.dkim = objects.dkim.clone().into_iter().collect();
        Ok(tenancy)
    }

    /// Checks a user's password. A PBKDF2 check costs tens of milliseconds,
    /// so a pair that passed once is remembered (as a digest, not the password).
    pub fn authenticate(&self, name: &str, password: &str) -> bool {
        let snapshot = self.snapshot();
        let Some(hash) = snapshot
            .users
            .get(name)
            .and_then(|u| u.password_hash.clone())
        else {
            // The same work as for a known user, so that the time taken
            // does not tell which user names exist.
            secrets::verify_password(dummy_password_hash(), password);
            return false;
        };
        let digest = {
            let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
            ctx.update(hash.as_bytes());
            ctx.update(&[0]);
            ctx.update(password.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(ctx.finish().as_ref());
            out
        };
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.get(name) == Some(&digest) {
            return true;
        }
        drop(verified);
        if !secrets::verify_password(&hash, password) {
            return false;
        }
        verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        verified.insert(name.to_owned(), digest);
        true
    }
}

/// Why `user`'s group is not usable, if it is not: once groups are
/// declared every user is in one of them (mail through a server no group
/// allocates would escape every limit).
pub fn missing_group<G>(user: &User, groups: &BTreeMap<String, G>) -> Option<String> {
    let declared = !groups.is_empty();
    let in_a_group = groups.contains_key(&user.group) || (!declared && user.group == "default");
    match () {
        _ if in_a_group => None,
        _ if user.group == "default" => Some(
            "group: user groups are declared, so the user needs one: set `group` to one of them \
             or declare a group called `default`"
                .into(),
        ),
        _ => Some(format!("group: no user group is called `{}`", user.group)),
    }
}

/// A user may own at most its group's `sender_domains_limit` domains;
/// 0 means no limit (as in Octeth).
fn check_domain_limits(objects: &Objects, tenancy: &Tenancy) -> Result<(), TenancyError> {
    let mut owned: HashMap<&str, u32> = HashMap::new();
    for domain in objects.domains.values() {
        *owned.entry(domain.owner.as_str()).or_default() += 1;
    }
    for (owner, count) in owned {
        let group = tenancy.group_of(tenancy.users.get(owner).map(|u| u.as_ref()));
        let (group_name, limit) = group
            .map_or(("(none)", model::DEFAULT_SENDER_DOMAINS_LIMIT), |g| {
                (g.name.as_str(), g.sender_domains_limit)
            });
        if limit != 0 && count > limit {
            return Err(TenancyError::Invalid {
                kind: DOMAIN,
                name: owner.to_owned(),
                message: format!(
                    "user {owner} would own {count} sender domains; group {group_name} allows {limit}"
                ),
            });
        }
    }
    Ok(())
}

/// Servers stored before durations needed a unit could keep a bare number
/// of seconds as `timeout`; read it as seconds, so that an upgrade cannot
/// stop the daemon from starting over an object only the running daemon
/// could change. The next put of the server stores it with its unit.
fn with_timeout_units(
    mut servers: BTreeMap<String, DeliveryServerSpec>,
) -> BTreeMap<String, DeliveryServerSpec> {
    for (name, spec) in servers.iter_mut() {
        let Some(timeout) = spec.timeout.as_mut() else {
            continue;
        };
        let digits = timeout.trim();
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            log::warn!(
                "delivery server {name}: stored timeout `{digits}` has no unit; read as \"{digits}s\" \
                 (put the server again to store it so)"
            );
            *timeout = format!("{digits}s");
        }
    }
    servers
}

/// How `new` sends its password somewhere else than `old`: another host,
/// port or username, or weaker or different TLS; `None` when it does not.
fn endpoint_change(old: &DeliveryServerSpec, new: &DeliveryServerSpec) -> Option<String> {
    let encryption = |s: &DeliveryServerSpec| s.encryption.clone().unwrap_or_else(|| "none".into());
    let port = |s: &DeliveryServerSpec| {
        s.port
            .unwrap_or(if encryption(s) == "tls" { 465 } else { 25 })
            .to_string()
    };
    let host = |s: &DeliveryServerSpec| s.host.trim().to_ascii_lowercase();
    let username = |s: &DeliveryServerSpec| {
        s.auth
            .as_ref()
            .map(|a| a.username.clone())
            .unwrap_or_default()
    };
    let tls_verify = |s: &DeliveryServerSpec| s.tls_verify.unwrap_or(true).to_string();
    [
        ("host", host(old), host(new)),
        ("port", port(old), port(new)),
        ("username", username(old), username(new)),
        ("encryption", encryption(old), encryption(new)),
        ("tls_verify", tls_verify(old), tls_verify(new)),
    ]
    .into_iter()
    .find(|(_, before, after)| before != after)
    .map(|(field, before, after)| format!("{field} changes from `{before}` to `{after}`"))
}

/// A hash no password matches in practice, verified for unknown users.
fn dummy_password_hash() -> &'static str {
    static DUMMY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| secrets::hash_password("no user has this password"));
    &DUMMY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_stored_with_a_unitless_timeout_still_loads_as_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(sendengine_queue::SpoolConfig::new(dir.path())).unwrap();
        let stored = br#"{"name":"old","host":"127.0.0.1","timeout":"30"}"#;
        spool.put_object(SERVER, "old", stored.to_vec()).unwrap();

        let store = TenancyStore::open(spool, Secrets::from_key([7; 32]), &Seeds::default())
            .expect("an object stored by an older version does not stop the start");
        let server = store.snapshot().server("old").cloned().unwrap();
        assert_eq!(server.timeout, std::time::Duration::from_secs(30));
    }
}
