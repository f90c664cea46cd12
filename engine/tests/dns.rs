//! The resolver against a real DNS server on loopback (the test fixture in
//! `support::dns_server`): MX order, the implicit-MX fallback, null MX,
//! permanent versus temporary failures, TXT joining, CNAME, and TCP retry
//! of a truncated UDP answer.

mod support;

use std::net::IpAddr;

use sendengine::dns::{DnsError, MxHost, MxLookup, Resolver};
use support::dns_server::{DnsServer, RecordData};

fn resolver(server: &DnsServer) -> Resolver {
    Resolver::with_nameservers(&[server.addr])
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn host(preference: u16, exchange: &str) -> MxHost {
    MxHost {
        preference,
        exchange: exchange.into(),
        implicit: false,
    }
}

#[tokio::test]
async fn mx_hosts_come_sorted_by_preference() {
    let dns = DnsServer::start(vec![
        ("example.test", RecordData::mx(20, "MX2.Example.Test.")),
        ("example.test", RecordData::mx(5, "mx0.example.test")),
        ("example.test", RecordData::mx(10, "mx1.example.test")),
    ]);
    let found = resolver(&dns).mx("Example.TEST.").await.expect("MX lookup");
    assert_eq!(
        found,
        MxLookup::Hosts(vec![
            host(5, "mx0.example.test"),
            host(10, "mx1.example.test"),
            host(20, "mx2.example.test"),
        ])
    );
}

#[tokio::test]
async fn no_mx_falls_back_to_the_domain_address() {
    let dns = DnsServer::start(vec![
        ("plain.test", RecordData::A("127.0.0.7".parse().unwrap())),
        ("plain.test", RecordData::Aaaa("::1".parse().unwrap())),
    ]);
    let resolver = resolver(&dns);
    let found = resolver.mx("plain.test").await.expect("MX lookup");
    assert_eq!(
        found,
        MxLookup::Hosts(vec![MxHost {
            preference: 0,
            exchange: "plain.test".into(),
            implicit: true,
        }])
    );
    let addresses = resolver.addresses("plain.test").await.expect("addresses");
    assert_eq!(addresses, vec![ip("127.0.0.7"), ip("::1")]);
}

#[tokio::test]
async fn null_mx_is_reported() {
    let dns = DnsServer::start(vec![
        ("nomail.test", RecordData::NullMx),
        ("nomail.test", RecordData::A("127.0.0.1".parse().unwrap())),
    ]);
    let found = resolver(&dns).mx("nomail.test").await.expect("MX lookup");
    assert_eq!(found, MxLookup::NullMx);
}

#[tokio::test]
async fn a_missing_domain_is_permanent() {
    let dns = DnsServer::start(vec![(
        "example.test",
        RecordData::mx(10, "mx.example.test"),
    )]);
    let resolver = resolver(&dns);
    let error = resolver
        .mx("nowhere.test")
        .await
        .expect_err("no such domain");
    assert!(
        matches!(error, DnsError::NxDomain { ref name } if name == "nowhere.test"),
        "{error:?}"
    );
    assert!(error.is_permanent());
    let error = resolver
        .addresses("nowhere.test")
        .await
        .expect_err("no such host");
    assert!(matches!(error, DnsError::NxDomain { .. }), "{error:?}");
}

#[tokio::test]
async fn a_domain_without_mx_or_address_is_permanent() {
    let dns = DnsServer::start(vec![("textonly.test", RecordData::txt(&["hello"]))]);
    let error = resolver(&dns)
        .mx("textonly.test")
        .await
        .expect_err("nowhere to deliver");
    assert!(matches!(error, DnsError::NoRecords { .. }), "{error:?}");
    assert!(error.is_permanent());
    assert!(error.to_string().contains("textonly.test"), "{error}");
}

#[tokio::test]
async fn servfail_is_temporary() {
    let dns = DnsServer::start(vec![
        ("broken.test", RecordData::ServFail),
        ("fine.test", RecordData::mx(10, "mx.fine.test")),
    ]);
    let resolver = resolver(&dns);
    let error = resolver.mx("broken.test").await.expect_err("SERVFAIL");
    assert!(matches!(error, DnsError::Temporary { .. }), "{error:?}");
    assert!(!error.is_permanent());
    let error = resolver
        .addresses("broken.test")
        .await
        .expect_err("SERVFAIL");
    assert!(!error.is_permanent(), "{error:?}");
    // The same server still answers other names.
    assert!(resolver.mx("fine.test").await.is_ok());
}

#[tokio::test]
async fn an_unreachable_server_is_temporary() {
    // A bound but silent UDP port: queries time out (5 s × 2 attempts).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let resolver = Resolver::with_nameservers(&[silent.local_addr().unwrap()]);
    let error = resolver.txt("example.test").await.expect_err("no answer");
    assert!(!error.is_permanent(), "{error:?}");
}

#[tokio::test]
async fn txt_strings_of_a_record_are_joined() {
    let dns = DnsServer::start(vec![
        (
            "example.test",
            RecordData::txt(&["v=spf1 ip4:192.0.2.1 ", "-all"]),
        ),
        ("example.test", RecordData::txt(&["second record"])),
    ]);
    let mut texts = resolver(&dns)
        .txt("example.test")
        .await
        .expect("TXT lookup");
    texts.sort();
    assert_eq!(texts, vec!["second record", "v=spf1 ip4:192.0.2.1 -all"]);
}

#[tokio::test]
async fn cname_targets_and_aliases_resolve() {
    let dns = DnsServer::start(vec![
        ("track.example.test", RecordData::cname("Track.ESP.test.")),
        (
            "track.esp.test",
            RecordData::A("127.0.0.9".parse().unwrap()),
        ),
    ]);
    let resolver = resolver(&dns);
    let targets = resolver.cname("track.example.test").await.expect("CNAME");
    assert_eq!(targets, vec!["track.esp.test"]);
    let addresses = resolver
        .addresses("track.example.test")
        .await
        .expect("via alias");
    assert_eq!(addresses, vec![ip("127.0.0.9")]);
    let error = resolver
        .cname("track.esp.test")
        .await
        .expect_err("not an alias");
    assert!(matches!(error, DnsError::NoRecords { .. }), "{error:?}");
}

#[tokio::test]
async fn a_truncated_udp_answer_is_fetched_over_tcp() {
    // 40 records of 100 bytes: far above what fits in one UDP answer.
    let records: Vec<(String, RecordData)> = (0..40)
        .map(|i| {
            (
                "big.test".to_string(),
                RecordData::txt(&[&format!("{i:03}{}", "x".repeat(97))]),
            )
        })
        .collect();
    let dns = DnsServer::start(records);
    let texts = resolver(&dns).txt("big.test").await.expect("TXT over TCP");
    assert_eq!(texts.len(), 40);
    assert!(texts.iter().all(|t| t.len() == 100));
    assert!(
        dns.tcp_query_count() > 0,
        "the answer should have come over TCP"
    );
}

#[tokio::test]
async fn the_system_resolver_reads_resolv_conf() {
    if !std::path::Path::new("/etc/resolv.conf").exists() {
        support::missing_peer("/etc/resolv.conf", "the system resolver configuration");
        return;
    }
    // Built only: tests send no query beyond loopback.
    assert!(Resolver::system().is_ok());
}
