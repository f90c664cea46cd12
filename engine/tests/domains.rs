//! Sender domains end to end: records generated from a template that uses
//! every placeholder, published on a real DNS server on loopback, verified
//! by the resolver; a wrong, missing or unresolvable record is named. Then
//! through the daemon: `sendctl domain` and the background verifier, and
//! what an operator changes while a verification waits for DNS.

mod support;

use sendengine::dns::Resolver;
use sendengine::domains::{
    DnsTemplate, DomainRecord, DomainSettings, DomainStatus, RecordKind, SenderDomain,
    TemplateRecord, domain_hash, generate_records, mail_from_domain, verify,
};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::dns_server::{DnsServer, RecordData};
use support::{Daemon, DaemonConfig, Sink, ctl, sendctl, sendctl_in, wait_for};

const SECRET: &[u8] = b"test secret for domain hashes";
const NOW_MS: u64 = 1_700_000_000_000;

fn record(kind: RecordKind, name: &str, value: &str, priority: Option<u16>) -> TemplateRecord {
    TemplateRecord {
        kind,
        name: name.into(),
        value: value.into(),
        priority,
    }
}

/// Uses all six placeholders across the four record kinds.
fn template() -> DnsTemplate {
    DnsTemplate {
        name: "standard".into(),
        records: vec![
            record(
                RecordKind::Txt,
                "_sendengine._SenderDomain_",
                "sendengine-verification=_SenderDomainHash_",
                None,
            ),
            record(
                RecordKind::Cname,
                "_TrackingPrefix__Separator__SenderDomainRandom_",
                "track.esp.test",
                None,
            ),
            record(
                RecordKind::Mx,
                "_SubDomain_._SenderDomain_",
                "bounce.esp.test.",
                Some(10),
            ),
            record(
                RecordKind::Txt,
                "_SubDomain_",
                "v=spf1 include:_SenderDomainRandom_.spf.esp.test -all",
                None,
            ),
            record(RecordKind::A, "www._SenderDomain_", "127.0.0.42", None),
        ],
    }
}

/// What an operator would publish for `records` (TXT split into strings
/// to check that verification joins them).
fn zone_for(records: &[DomainRecord]) -> Vec<(String, RecordData)> {
    records
        .iter()
        .map(|r| {
            let data = match r.kind {
                RecordKind::Txt => {
                    let (head, tail) = r.value.split_at(r.value.len() / 2);
                    RecordData::txt(&[head, tail])
                }
                RecordKind::Cname => RecordData::cname(&r.value),
                RecordKind::Mx => RecordData::mx(r.priority.unwrap(), &r.value),
                RecordKind::A => RecordData::A(r.value.parse().unwrap()),
            };
            (r.name.clone(), data)
        })
        .collect()
}

/// HMAC-SHA256 + URL-safe base64 by Python's standard library, as an
/// independent check of `_SenderDomainHash_`; None without python3.
fn python_hash(domain: &str) -> Option<String> {
    let script = "import base64,hmac,hashlib,sys\n\
        d=hmac.new(sys.argv[1].encode(),sys.argv[2].encode(),hashlib.sha256).digest()\n\
        print(base64.urlsafe_b64encode(d).decode().rstrip('=')[:16])";
    let out = support::python(
        script,
        &[String::from_utf8(SECRET.to_vec()).unwrap(), domain.into()],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[test]
fn records_are_generated_with_every_placeholder() {
    let settings = DomainSettings::default();
    let records = generate_records(&template(), "Customer.Example", &settings, SECRET);
    let hash = domain_hash("customer.example", SECRET);
    assert_eq!(hash.len(), 16);
    match python_hash("customer.example") {
        Some(expected) => assert_eq!(hash, expected),
        None => support::missing_peer(
            "python3",
            "it checks the hash: scripts/install-test-deps.sh",
        ),
    }

    // The random token is the tail of the tracking CNAME's name.
    let tracking = &records[1].name;
    let random = tracking
        .strip_prefix("track-")
        .and_then(|rest| rest.strip_suffix(".customer.example"))
        .unwrap_or_else(|| panic!("unexpected tracking name {tracking}"));
    assert_eq!(random.len(), 10);
    assert!(
        random
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    );

    let expected = vec![
        DomainRecord {
            kind: RecordKind::Txt,
            name: "_sendengine.customer.example".into(),
            value: format!("sendengine-verification={hash}"),
            priority: None,
        },
        DomainRecord {
            kind: RecordKind::Cname,
            name: format!("track-{random}.customer.example"),
            value: "track.esp.test".into(),
            priority: None,
        },
        DomainRecord {
            kind: RecordKind::Mx,
            name: "sl.customer.example".into(),
            value: "bounce.esp.test".into(),
            priority: Some(10),
        },
        DomainRecord {
            kind: RecordKind::Txt,
            name: "sl.customer.example".into(),
            value: format!("v=spf1 include:{random}.spf.esp.test -all"),
            priority: None,
        },
        DomainRecord {
            kind: RecordKind::A,
            name: "www.customer.example".into(),
            value: "127.0.0.42".into(),
            priority: None,
        },
    ];
    assert_eq!(records, expected);
    assert_eq!(
        mail_from_domain("customer.example", &settings),
        records[2].name
    );

    // The hash is stable and tied to domain and secret; the random is not.
    assert_eq!(domain_hash("CUSTOMER.example.", SECRET), hash);
    assert_ne!(domain_hash("other.example", SECRET), hash);
    assert_ne!(domain_hash("customer.example", b"another secret"), hash);
    let again = generate_records(&template(), "customer.example", &settings, SECRET);
    assert_eq!(again[0], records[0]);
    assert_ne!(again[1].name, records[1].name);

    // Group settings feed their placeholders.
    let custom = DomainSettings {
        subdomain: "bounces".into(),
        tracking_prefix: "t".into(),
        separator: "_".into(),
    };
    let custom_records = generate_records(&template(), "customer.example", &custom, SECRET);
    assert!(
        custom_records[1].name.starts_with("t_"),
        "{}",
        custom_records[1].name
    );
    assert_eq!(custom_records[2].name, "bounces.customer.example");
}

#[test]
fn domains_round_trip_through_json() {
    let domain = SenderDomain::new(
        "customer.example",
        "user-1",
        &template(),
        &DomainSettings::default(),
        SECRET,
        NOW_MS,
    );
    assert_eq!(domain.status, DomainStatus::Pending);
    let json = serde_json::to_value(&domain).unwrap();
    assert_eq!(json["status"], "pending");
    assert_eq!(json["records"][1]["kind"], "CNAME");
    let back: SenderDomain = serde_json::from_value(json).unwrap();
    assert_eq!(back, domain);

    let template: DnsTemplate = serde_json::from_str(
        r#"{"name":"t","records":[{"kind":"MX","name":"_SubDomain_","value":"mx.esp.test","priority":5}]}"#,
    )
    .unwrap();
    assert_eq!(template.records[0].priority, Some(5));
    let settings: DomainSettings = serde_json::from_str(r#"{"subdomain":"mfrom"}"#).unwrap();
    assert_eq!(settings.tracking_prefix, "track");
}

#[test]
fn a_template_without_records_enables_at_once() {
    let empty = DnsTemplate {
        name: "none".into(),
        records: Vec::new(),
    };
    let domain = SenderDomain::new(
        "x.example",
        "u",
        &empty,
        &DomainSettings::default(),
        SECRET,
        NOW_MS,
    );
    assert!(domain.is_enabled());
    assert!(domain.records.is_empty());
}

#[tokio::test]
async fn verification_passes_when_every_record_is_published() {
    let mut domain = SenderDomain::new(
        "customer.example",
        "user-1",
        &template(),
        &DomainSettings::default(),
        SECRET,
        NOW_MS,
    );
    let dns = DnsServer::start(zone_for(&domain.records));
    let resolver = Resolver::with_nameservers(&[dns.addr]);
    verify(&resolver, &mut domain, NOW_MS + 1).await;
    assert_eq!(
        domain.status,
        DomainStatus::Enabled,
        "{}",
        domain.failure_summary()
    );
    assert_eq!(domain.checks.len(), 5);
    assert!(domain.checks.iter().all(|c| c.ok && c.problem.is_none()));
    assert_eq!(domain.last_verified_ms, Some(NOW_MS + 1));
    assert_eq!(domain.checks[2].found, vec!["10 bounce.esp.test"]);
}

#[tokio::test]
async fn verification_names_exactly_the_failing_record() {
    let mut domain = SenderDomain::new(
        "customer.example",
        "user-1",
        &template(),
        &DomainSettings::default(),
        SECRET,
        NOW_MS,
    );
    let good_zone = zone_for(&domain.records);
    let resolver_for = |dns: &DnsServer| Resolver::with_nameservers(&[dns.addr]);

    // One wrong TXT value (the ownership proof).
    let mut zone = good_zone.clone();
    zone[0].1 = RecordData::txt(&["sendengine-verification=forged"]);
    let dns = DnsServer::start(zone);
    let resolver = resolver_for(&dns);
    verify(&resolver, &mut domain, NOW_MS).await;
    assert_eq!(domain.status, DomainStatus::Failed);
    let failed: Vec<_> = domain.failed_checks().collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].name, "_sendengine.customer.example");
    assert_eq!(failed[0].kind, RecordKind::Txt);
    assert_eq!(failed[0].found, vec!["sendengine-verification=forged"]);
    let problem = failed[0].problem.as_deref().unwrap();
    assert!(problem.starts_with("wrong value"), "{problem}");
    assert!(
        domain
            .failure_summary()
            .contains("TXT _sendengine.customer.example")
    );

    // The MX with the wrong priority.
    let mut zone = good_zone.clone();
    zone[2].1 = RecordData::mx(20, "bounce.esp.test");
    dns.set_zone(zone);
    verify(&resolver, &mut domain, NOW_MS).await;
    let failed: Vec<_> = domain.failed_checks().collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0].kind, failed[0].name.as_str()),
        (RecordKind::Mx, "sl.customer.example")
    );
    assert_eq!(failed[0].found, vec!["20 bounce.esp.test"]);

    // The tracking CNAME missing altogether.
    let tracking = domain.records[1].name.clone();
    let zone: Vec<_> = good_zone
        .iter()
        .filter(|(name, _)| *name != tracking)
        .cloned()
        .collect();
    dns.set_zone(zone);
    verify(&resolver, &mut domain, NOW_MS).await;
    let failed: Vec<_> = domain.failed_checks().collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].name, tracking);
    assert!(failed[0].found.is_empty());
    let problem = failed[0].problem.as_deref().unwrap();
    assert!(problem.starts_with("missing"), "{problem}");

    // A DNS failure is reported as such, not as a wrong value.
    let mut zone = good_zone.clone();
    zone.push(("www.customer.example".into(), RecordData::ServFail));
    dns.set_zone(zone);
    verify(&resolver, &mut domain, NOW_MS).await;
    let failed: Vec<_> = domain.failed_checks().collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        (failed[0].kind, failed[0].name.as_str()),
        (RecordKind::A, "www.customer.example")
    );
    let problem = failed[0].problem.as_deref().unwrap();
    assert!(problem.starts_with("DNS error"), "{problem}");

    // Fixed: enabled.
    dns.set_zone(good_zone);
    verify(&resolver, &mut domain, NOW_MS + 5).await;
    assert_eq!(
        domain.status,
        DomainStatus::Enabled,
        "{}",
        domain.failure_summary()
    );
}

// ---- through the daemon -----------------------------------------------------------

const SPF: &str = "v=spf1 include:esp.test -all";

/// A daemon resolving with `dns`, with a template of one TXT record in
/// use by group `g`, and its users `alice` and `bob`.
fn daemon_with_a_template(dns: &DnsServer, dns_settings: &str) -> (Sink, Daemon) {
    let sink = Sink::start(&[]);
    let mut config = DaemonConfig::new(sink.addr.port());
    config.extra_top = format!("[dns]\n{}\n{dns_settings}\n", dns.nameservers_line());
    let daemon = Daemon::start(config);
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.json");
    let records = json!({"name": "basic", "records": [
        {"kind": "TXT", "name": "_SenderDomain_", "value": SPF},
    ]});
    std::fs::write(&template, records.to_string()).unwrap();
    ctl(
        &daemon,
        &["template", "put", "--file", template.to_str().unwrap()],
    );
    let group = json!({"name": "g", "marketing": ["test-sink"], "transactional": ["test-sink"],
        "autoresponder": ["test-sink"], "dns_template": "basic"});
    let put = sendctl_in(&daemon, &["group", "put"], Some(&group.to_string()));
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    for user in ["alice", "bob"] {
        ctl(&daemon, &["user", "put", "--name", user, "--group", "g"]);
    }
    (sink, daemon)
}

/// Waits until the nameserver has been asked about `name` more than
/// `before` times: a verification has read the domain and is waiting.
fn wait_for_lookup(dns: &DnsServer, name: &str, before: usize) {
    wait_for(Duration::from_secs(20), "a lookup of the domain", || {
        (lookups_of(dns, name) > before).then_some(())
    });
}

fn lookups_of(dns: &DnsServer, name: &str) -> usize {
    dns.queries().iter().filter(|(n, _)| n == name).count()
}

#[test]
fn domains_from_a_pushed_template_show_their_records_and_verify() {
    let dns = DnsServer::start(Vec::<(&str, RecordData)>::new());
    let (_sink, daemon) = daemon_with_a_template(&dns, "");

    let created = ctl(
        &daemon,
        &["domain", "put", "Customer.Example", "--owner", "alice"],
    );
    assert_eq!(created["status"], "pending", "{created}");
    let zone = sendctl(&daemon, &["domain", "records", "customer.example"]);
    assert_eq!(
        String::from_utf8_lossy(&zone.stdout),
        format!("customer.example.\t3600\tIN\tTXT\t\"{SPF}\"\n")
    );
    let missing = ctl(&daemon, &["domain", "verify", "customer.example"]);
    assert_eq!(missing["status"], "failed", "{missing}");

    dns.add([("customer.example", RecordData::txt(&[SPF]))]);
    let verified = ctl(&daemon, &["domain", "verify", "customer.example"]);
    assert_eq!(verified["status"], "enabled", "{verified}");
    let listed = ctl(&daemon, &["domain", "list"]);
    assert_eq!(listed[0]["status"], "enabled", "the result is stored");

    // A template in use by a group cannot go; an unused domain can.
    let refused = sendctl(&daemon, &["template", "delete", "basic"]);
    assert_eq!(refused.status.code(), Some(1));
    ctl(&daemon, &["domain", "delete", "customer.example"]);
    assert_eq!(ctl(&daemon, &["domain", "list"]), json!([]));
}

/// `sendctl domain verify` started now, still waiting for its answer.
fn verify_in_background(daemon: &Daemon, domain: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sendctl"))
        .arg("--socket")
        .arg(daemon.admin_socket())
        .args(["domain", "verify", domain])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sendctl")
}

#[test]
fn a_domain_moved_or_deleted_while_sendctl_verifies_it_stays_so() {
    let dns = DnsServer::start([("customer.example", RecordData::txt(&[SPF]))]);
    let (_sink, daemon) = daemon_with_a_template(&dns, "");
    ctl(
        &daemon,
        &["domain", "put", "customer.example", "--owner", "alice"],
    );
    dns.set_delay(Duration::from_secs(2));

    // Moved to bob while alice's records are looked up (and found): the
    // verification of alice's domain is not stored over bob's.
    let before = lookups_of(&dns, "customer.example");
    let verify = verify_in_background(&daemon, "customer.example");
    wait_for_lookup(&dns, "customer.example", before);
    let moved = ctl(
        &daemon,
        &["domain", "put", "customer.example", "--owner", "bob"],
    );
    assert_eq!(moved["owner"], "bob", "{moved}");
    let refused = verify.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("changed while its records were looked up")
            && stderr.contains("sendctl domain verify customer.example"),
        "{stderr}"
    );
    let listed = ctl(&daemon, &["domain", "list"]);
    assert_eq!(listed[0]["owner"], "bob", "{listed}");
    assert_eq!(listed[0]["status"], "pending", "{listed}");

    // Deleted meanwhile: it does not come back.
    let before = lookups_of(&dns, "customer.example");
    let verify = verify_in_background(&daemon, "customer.example");
    wait_for_lookup(&dns, "customer.example", before);
    ctl(&daemon, &["domain", "delete", "customer.example"]);
    let refused = verify.wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(ctl(&daemon, &["domain", "list"]), json!([]));

    // Left alone, the same verification is stored.
    dns.set_delay(Duration::ZERO);
    ctl(
        &daemon,
        &["domain", "put", "customer.example", "--owner", "bob"],
    );
    let verified = ctl(&daemon, &["domain", "verify", "customer.example"]);
    assert_eq!(verified["status"], "enabled", "{verified}");
    assert_eq!(ctl(&daemon, &["domain", "list"])[0]["status"], "enabled");
}

#[test]
fn a_domain_deleted_while_the_background_verifier_checks_it_stays_deleted() {
    let dns = DnsServer::start([("customer.example", RecordData::txt(&[SPF]))]);
    dns.set_delay(Duration::from_secs(1));
    let (_sink, daemon) = daemon_with_a_template(&dns, "verify_interval = \"200ms\"");
    let before = lookups_of(&dns, "customer.example");
    ctl(
        &daemon,
        &["domain", "put", "customer.example", "--owner", "alice"],
    );
    wait_for_lookup(&dns, "customer.example", before);
    ctl(&daemon, &["domain", "delete", "customer.example"]);
    // Past the lookup under way and a few more rounds.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(ctl(&daemon, &["domain", "list"]), json!([]));
}
