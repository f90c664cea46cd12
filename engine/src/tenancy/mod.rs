//! Tenancy: the operator's objects, kept in the spool's object table and
//! served to the rest of the daemon as an immutable snapshot.
//!
//! `TenancyStore::open` writes the seeds of `config.toml` over the stored
//! objects of the same names (the file wins for what it names; objects
//! pushed later through the admin socket stay), then builds the first
//! `Tenancy`. A change validates the whole new set before it is stored and
//! swapped in; work in flight keeps the snapshot it started with.

pub mod model;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use sendengine_queue::Spool;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use model::{AuthSpec, CHANNELS, DeliveryServer, DeliveryServerSpec, User, UserGroup};

use crate::domains::{DnsTemplate, SenderDomain};
use crate::secrets::{self, Secrets};

const SERVER: &str = "server";
const GROUP: &str = "group";
const USER: &str = "user";
const TEMPLATE: &str = "template";
const DOMAIN: &str = "domain";

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
    implicit_group: Option<Arc<UserGroup>>,
}

impl Tenancy {
    pub fn server(&self, name: &str) -> Option<&Arc<DeliveryServer>> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The user's group; the `default` group when it has none or is unknown.
    pub fn group_of(&self, user: Option<&User>) -> &Arc<UserGroup> {
        let name = user.map(|u| u.group.as_str()).unwrap_or("default");
        self.groups
            .get(name)
            .or_else(|| self.groups.get("default"))
            .or(self.implicit_group.as_ref())
            .expect("an implicit default group exists when no group is declared")
    }

    pub fn group(&self, name: &str) -> &Arc<UserGroup> {
        self.groups
            .get(name)
            .or_else(|| self.groups.get("default"))
            .or(self.implicit_group.as_ref())
            .expect("an implicit default group exists when no group is declared")
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
    /// Users whose password was checked: name -> SHA-256(hash | password).
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

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
            verified: Mutex::new(HashMap::new()),
        };
        store.write_seeds(seeds)?;
        let tenancy = store.load()?;
        *store.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenancy);
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

    fn write_seeds(&self, seeds: &Seeds) -> Result<(), TenancyError> {
        for spec in &seeds.servers {
            let mut stored = spec.clone();
            if let Some(auth) = stored.auth.as_mut()
                && !Secrets::is_sealed(&auth.password)
            {
                auth.password = self.secrets.seal(&auth.password);
            }
            self.put(SERVER, &spec.name, &stored)?;
        }
        for group in &seeds.groups {
            self.put(GROUP, &group.name, group)?;
        }
        for user in &seeds.users {
            let mut stored = user.clone();
            if let Some(password) = stored.password.take() {
                stored.password_hash = Some(if secrets::is_password_hash(&password) {
                    password
                } else {
                    secrets::hash_password(&password)
                });
            }
            self.put(USER, &user.name, &stored)?;
        }
        for template in &seeds.templates {
            self.put(TEMPLATE, &template.name, template)?;
        }
        self.create_seed_domains(seeds)
    }

    fn create_seed_domains(&self, seeds: &Seeds) -> Result<(), TenancyError> {
        let existing: HashMap<String, SenderDomain> = self.load_kind(DOMAIN)?.into_iter().collect();
        let templates: HashMap<String, DnsTemplate> =
            self.load_kind(TEMPLATE)?.into_iter().collect();
        let groups: HashMap<String, UserGroup> = self.load_kind(GROUP)?.into_iter().collect();
        let users: HashMap<String, User> = self.load_kind(USER)?.into_iter().collect();
        for (domain, owner) in &seeds.domains {
            let name = domain.to_ascii_lowercase();
            if existing.get(&name).is_some_and(|d| &d.owner == owner) {
                continue;
            }
            let group = users
                .get(owner)
                .and_then(|u| groups.get(&u.group))
                .cloned()
                .unwrap_or_else(|| UserGroup::implicit_default(&[]));
            let empty = DnsTemplate {
                name: String::new(),
                records: Vec::new(),
            };
            let template = group
                .dns_template
                .as_ref()
                .and_then(|t| templates.get(t))
                .unwrap_or(&empty);
            let secret = self.secrets.derived("domain-hash");
            let created = SenderDomain::new(
                &name,
                owner,
                template,
                &group.domain_settings,
                &secret,
                crate::timefmt::now_ms(),
            );
            self.put(DOMAIN, &name, &created)?;
        }
        Ok(())
    }

    fn put<T: Serialize>(
        &self,
        kind: &'static str,
        name: &str,
        value: &T,
    ) -> Result<(), TenancyError> {
        let json = serde_json::to_vec(value).map_err(|e| TenancyError::Invalid {
            kind,
            name: name.to_owned(),
            message: e.to_string(),
        })?;
        self.spool.put_object(kind, name, json)?;
        Ok(())
    }

    fn load_kind<T: DeserializeOwned>(
        &self,
        kind: &'static str,
    ) -> Result<Vec<(String, T)>, TenancyError> {
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

    /// Reads every object and checks that they fit together.
    fn load(&self) -> Result<Tenancy, TenancyError> {
        let mut servers = Vec::new();
        let specs: BTreeMap<String, DeliveryServerSpec> =
            self.load_kind(SERVER)?.into_iter().collect();
        for (name, spec) in specs {
            let password = match &spec.auth {
                Some(a) => {
                    Some(
                        self.secrets
                            .open(&a.password)
                            .map_err(|e| TenancyError::Invalid {
                                kind: SERVER,
                                name: name.clone(),
                                message: e.to_string(),
                            })?,
                    )
                }
                None => None,
            };
            let server = spec
                .validate(password)
                .map_err(|message| TenancyError::Invalid {
                    kind: SERVER,
                    name,
                    message,
                })?;
            servers.push(Arc::new(server));
        }
        let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
        let mut tenancy = Tenancy {
            servers,
            ..Tenancy::default()
        };
        for (name, group) in self.load_kind::<UserGroup>(GROUP)? {
            group
                .validate(|s| names.iter().any(|n| n == s))
                .map_err(|message| TenancyError::Invalid {
                    kind: GROUP,
                    name: name.clone(),
                    message,
                })?;
            tenancy.groups.insert(name, Arc::new(group));
        }
        if !tenancy.groups.contains_key("default") {
            tenancy.implicit_group = Some(Arc::new(UserGroup::implicit_default(&names)));
        }
        for (name, user) in self.load_kind::<User>(USER)? {
            user.validate().map_err(|message| TenancyError::Invalid {
                kind: USER,
                name: name.clone(),
                message,
            })?;
            tenancy.users.insert(name, Arc::new(user));
        }
        tenancy.templates = self.load_kind(TEMPLATE)?.into_iter().collect();
        tenancy.domains = self.load_kind(DOMAIN)?.into_iter().collect();
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
