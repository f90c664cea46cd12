//! DNS lookups for delivery and sender-domain verification: MX (with the
//! RFC 5321 implicit A/AAAA fallback and the RFC 7505 null MX), addresses,
//! TXT and CNAME, on hickory-resolver.
//!
//! Every failure is sorted into permanent (the name does not exist, or has
//! no usable record: the message bounces) and temporary (SERVFAIL, timeout,
//! unreachable server: the message is deferred). Names are normalised
//! (lowercase, no trailing dot) and always queried as fully qualified names,
//! so search domains never apply.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as WireError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

/// How long one query to one server may take before it is retried.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Tries per server before the lookup gives up on it.
const QUERY_ATTEMPTS: usize = 2;
/// Hard cap on a whole lookup (all servers, retries, CNAME chasing), so a
/// delivery worker is never held longer than this by DNS.
const LOOKUP_DEADLINE: Duration = Duration::from_secs(20);
/// Cached answers (positive and negative), bounded by their TTLs.
const CACHE_ENTRIES: u64 = 4_096;

/// A DNS lookup failure, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN), or is not a valid DNS name.
    #[error("{name}: no such domain (NXDOMAIN)")]
    NxDomain { name: String },
    /// The name exists but has no record of the asked kind.
    #[error("{name}: no {kind} record")]
    NoRecords { name: String, kind: String },
    /// The answer could not be had now (SERVFAIL, REFUSED, timeout, network).
    #[error("{name}: DNS lookup failed temporarily: {reason}")]
    Temporary { name: String, reason: String },
}

impl DnsError {
    /// True when asking again will not help: the message should bounce.
    pub fn is_permanent(&self) -> bool {
        matches!(self, DnsError::NxDomain { .. } | DnsError::NoRecords { .. })
    }
}

/// The mail exchangers of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxLookup {
    /// Hosts to try, lowest preference first. When the domain has no MX
    /// but has an address, this is the domain itself, flagged `implicit`.
    Hosts(Vec<MxHost>),
    /// The domain publishes `MX 0 .`: it accepts no mail (RFC 7505).
    NullMx,
}

/// One mail exchanger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    /// Normalised host name (lowercase, no trailing dot).
    pub exchange: String,
    /// True for the RFC 5321 5.1 fallback to the domain's own address.
    pub implicit: bool,
}

/// A cheap-to-clone handle on a caching resolver.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// The resolver of the system (`/etc/resolv.conf`), with our timeouts.
    pub fn system() -> Result<Resolver, DnsError> {
        let mut builder = TokioResolver::builder_tokio().map_err(|e| DnsError::Temporary {
            name: "/etc/resolv.conf".into(),
            reason: format!("cannot read the system resolver configuration: {e}"),
        })?;
        apply_limits(builder.options_mut());
        let inner = builder.build().map_err(|e| DnsError::Temporary {
            name: "/etc/resolv.conf".into(),
            reason: format!("cannot set up the system resolver: {e}"),
        })?;
        Ok(Resolver { inner })
    }

    /// A resolver that asks only `servers` (UDP, TCP when an answer is
    /// truncated), with no search domains and no hosts file: for tests and
    /// the `[dns] nameservers` setting.
    pub fn with_nameservers(servers: &[SocketAddr]) -> Resolver {
        let name_servers = servers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        let config = ResolverConfig::from_name_servers(name_servers);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        let options = builder.options_mut();
        apply_limits(options);
        options.use_hosts_file = ResolveHosts::Never;
        options.ndots = 0;
        // Building fails only when hickory cannot make its (unused here)
        // DNS-over-TLS client settings, which depend on neither the servers
        // nor any file: a broken build, not bad input.
        let inner = builder
            .build()
            .unwrap_or_else(|e| panic!("a plain UDP/TCP resolver could not be built: {e}"));
        Resolver { inner }
    }

    /// The mail exchangers of `domain`, for direct delivery.
    pub async fn mx(&self, domain: &str) -> Result<MxLookup, DnsError> {
        let domain = normalise(domain);
        let records = match self.mx_records(&domain).await {
            Ok(records) => records,
            Err(DnsError::NoRecords { .. }) => Vec::new(),
            Err(other) => return Err(other),
        };
        if let [only] = records.as_slice()
            && only.exchange.is_empty()
        {
            return Ok(MxLookup::NullMx);
        }
        // A "." among real exchangers is a publishing mistake: skip it.
        let hosts: Vec<MxHost> = records
            .into_iter()
            .filter(|host| !host.exchange.is_empty())
            .collect();
        if !hosts.is_empty() {
            return Ok(MxLookup::Hosts(hosts));
        }
        self.implicit_mx(&domain).await
    }

    /// The MX records of `name` exactly as published, lowest preference
    /// first (stable for equal preferences); a null MX has an empty
    /// `exchange`. No address fallback: for verification.
    pub async fn mx_records(&self, name: &str) -> Result<Vec<MxHost>, DnsError> {
        let name = normalise(name);
        let data = self.lookup(&name, RecordType::MX).await?;
        let mut hosts: Vec<MxHost> = data
            .into_iter()
            .filter_map(|rdata| match rdata {
                RData::MX(mx) => Some(MxHost {
                    preference: mx.preference,
                    exchange: name_to_string(&mx.exchange),
                    implicit: false,
                }),
                _ => None,
            })
            .collect();
        if hosts.is_empty() {
            return Err(no_records(&name, RecordType::MX));
        }
        hosts.sort_by_key(|host| host.preference);
        Ok(hosts)
    }

    /// The IPv4 then IPv6 addresses of `host` (A and AAAA, asked together).
    /// One family failing temporarily is ignored when the other answers.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        let host = normalise(host);
        if let Ok(literal) = host.parse::<IpAddr>() {
            return Ok(vec![literal]);
        }
        let (v4, v6) = tokio::join!(
            self.lookup(&host, RecordType::A),
            self.lookup(&host, RecordType::AAAA)
        );
        let found: Vec<IpAddr> = [&v4, &v6]
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|rdata| match rdata {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
        Err(worst_of(&host, "A or AAAA", v4.err(), v6.err()))
    }

    /// The TXT records of `name`, each record's strings joined into one.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let name = normalise(name);
        let texts: Vec<String> = self
            .lookup(&name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|rdata| match rdata {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part))
                        .collect(),
                ),
                _ => None,
            })
            .collect();
        if texts.is_empty() {
            return Err(no_records(&name, RecordType::TXT));
        }
        Ok(texts)
    }

    /// The CNAME targets of `name` (normalised).
    pub async fn cname(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let name = normalise(name);
        let targets: Vec<String> = self
            .lookup(&name, RecordType::CNAME)
            .await?
            .into_iter()
            .filter_map(|rdata| match rdata {
                RData::CNAME(target) => Some(name_to_string(&target.0)),
                _ => None,
            })
            .collect();
        if targets.is_empty() {
            return Err(no_records(&name, RecordType::CNAME));
        }
        Ok(targets)
    }

    /// RFC 5321 5.1: no MX, but an address → the domain is its own MX.
    async fn implicit_mx(&self, domain: &str) -> Result<MxLookup, DnsError> {
        match self.addresses(domain).await {
            Ok(_) => Ok(MxLookup::Hosts(vec![MxHost {
                preference: 0,
                exchange: domain.to_owned(),
                implicit: true,
            }])),
            Err(DnsError::NoRecords { name, .. }) => Err(DnsError::NoRecords {
                name,
                kind: "MX, A or AAAA".into(),
            }),
            Err(other) => Err(other),
        }
    }

    /// One query, bounded by `LOOKUP_DEADLINE`; the record data of the answer
    /// (which may include the CNAMEs that led to it).
    async fn lookup(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, DnsError> {
        let fqdn = to_fqdn(name)?;
        let answer = tokio::time::timeout(LOOKUP_DEADLINE, self.inner.lookup(fqdn, kind)).await;
        match answer {
            Ok(Ok(lookup)) => Ok(lookup
                .answers()
                .iter()
                .map(|record| record.data.clone())
                .collect()),
            Ok(Err(error)) => Err(classify(name, kind, error)),
            Err(_) => Err(DnsError::Temporary {
                name: name.to_owned(),
                reason: format!("no answer within {} s", LOOKUP_DEADLINE.as_secs()),
            }),
        }
    }
}

fn apply_limits(options: &mut ResolverOpts) {
    options.timeout = QUERY_TIMEOUT;
    options.attempts = QUERY_ATTEMPTS;
    options.cache_size = CACHE_ENTRIES;
}

/// Lowercase, surrounding blanks and the trailing dot removed.
pub fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// A normalised name as hickory wants it: absolute, so no search list applies.
fn to_fqdn(name: &str) -> Result<Name, DnsError> {
    let absolute = format!("{name}.");
    let parsed = if absolute.is_ascii() {
        Name::from_ascii(&absolute)
    } else {
        Name::from_utf8(&absolute)
    };
    // A name that cannot be written in DNS cannot exist in it either.
    parsed.map_err(|_| DnsError::NxDomain {
        name: name.to_owned(),
    })
}

fn name_to_string(name: &Name) -> String {
    normalise(&name.to_ascii())
}

fn no_records(name: &str, kind: RecordType) -> DnsError {
    DnsError::NoRecords {
        name: name.to_owned(),
        kind: kind.to_string(),
    }
}

/// Sorts a hickory error into permanent and temporary.
fn classify(name: &str, kind: RecordType, error: NetError) -> DnsError {
    match error {
        NetError::Dns(WireError::NoRecordsFound(empty)) => {
            if empty.response_code == ResponseCode::NXDomain {
                DnsError::NxDomain {
                    name: name.to_owned(),
                }
            } else {
                no_records(name, kind)
            }
        }
        NetError::Dns(WireError::ResponseCode(code)) => DnsError::Temporary {
            name: name.to_owned(),
            reason: format!("the server answered {code} to the {kind} query"),
        },
        other => DnsError::Temporary {
            name: name.to_owned(),
            reason: format!("{kind} query: {other}"),
        },
    }
}

/// Combines the A and AAAA failures: temporary wins (an address may yet
/// appear), then NXDOMAIN, then "no records".
fn worst_of(name: &str, kind: &str, a: Option<DnsError>, b: Option<DnsError>) -> DnsError {
    let errors = [a, b];
    let errors = errors.iter().flatten();
    if let Some(temporary) = errors.clone().find(|e| !e.is_permanent()) {
        return temporary.clone();
    }
    if let Some(nx) = errors
        .clone()
        .find(|e| matches!(e, DnsError::NxDomain { .. }))
    {
        return nx.clone();
    }
    DnsError::NoRecords {
        name: name.to_owned(),
        kind: kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(normalise(" Mail.Example.COM. "), "mail.example.com");
        assert_eq!(normalise("."), "");
    }

    #[test]
    fn only_missing_names_and_records_are_permanent() {
        let nx = DnsError::NxDomain { name: "x".into() };
        let none = no_records("x", RecordType::MX);
        let temp = DnsError::Temporary {
            name: "x".into(),
            reason: "SERVFAIL".into(),
        };
        assert!(nx.is_permanent() && none.is_permanent() && !temp.is_permanent());
        assert_eq!(
            worst_of("x", "A", Some(nx.clone()), Some(temp.clone())),
            temp
        );
        assert_eq!(worst_of("x", "A", Some(none), Some(nx.clone())), nx);
    }

    #[test]
    fn invalid_names_do_not_exist() {
        let label = "a".repeat(64);
        assert!(matches!(to_fqdn(&label), Err(DnsError::NxDomain { .. })));
    }
}
