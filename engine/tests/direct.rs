//! Direct delivery (the built-in `direct` route) against the real daemon,
//! a real DNS server on loopback and a real sink standing in for the
//! recipients' MX hosts.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use support::dns_server::{DnsServer, RecordData};
use support::{Daemon, DaemonConfig, Sink};

const LONG: Duration = Duration::from_secs(60);

fn zone() -> Vec<(&'static str, RecordData)> {
    vec![
        // Two MX hosts: the preferred one (the sink) takes the mail.
        ("example.net", RecordData::mx(20, "backup-mx.example.net")),
        ("example.net", RecordData::mx(10, "mx.example.net")),
        ("mx.example.net", RecordData::A(Ipv4Addr::LOCALHOST)),
        (
            "backup-mx.example.net",
            RecordData::A(Ipv4Addr::new(127, 0, 0, 3)),
        ),
        // The preferred MX has no listener (127.0.0.2): the next one takes it.
        (
            "fallback.example",
            RecordData::mx(10, "dead-mx.example.net"),
        ),
        ("fallback.example", RecordData::mx(20, "mx.example.net")),
        (
            "dead-mx.example.net",
            RecordData::A(Ipv4Addr::new(127, 0, 0, 2)),
        ),
        // No MX at all: the domain's own address (RFC 5321 5.1).
        ("implicit.example", RecordData::A(Ipv4Addr::LOCALHOST)),
        ("nullmx.example", RecordData::NullMx),
        ("broken.example", RecordData::ServFail),
    ]
}

fn start(sink: &Sink, dns: &DnsServer) -> Daemon {
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"app\"\n[delivery]\nretry_schedule = [\"1h\"]\n[dns]\n{}\n[direct]\nport = {}\ntimeout = \"5s\"\n[[delivery_server]]\nname = \"unused\"\nhost = \"127.0.0.1\"\nport = 9\n[[user_group]]\nname = \"default\"\nmarketing = [\"direct\"]\ntransactional = [\"direct\"]\nautoresponder = [\"direct\"]\n[[user]]\nname = \"app\"\n",
        dns.nameservers_line(),
        sink.addr.port()
    );
    Daemon::start(DaemonConfig::custom(&config))
}

#[test]
fn direct_delivery_follows_mx_preference_and_splits_by_domain() {
    let sink = Sink::start(&[]);
    let backup = Sink::start_at(&format!("127.0.0.3:{}", sink.addr.port()), &[]);
    let dns = DnsServer::start(zone());
    let daemon = start(&sink, &dns);
    let out = support::smtplib_send(
        daemon.addr,
        "app@example.com",
        &[
            "a@example.net",
            "b@implicit.example",
            "c@example.net",
            "d@fallback.example",
        ],
        "<direct@test>",
    );
    assert!(out.contains("refused=0"), "{out}");

    // One transaction per destination domain, all at the preferred host.
    let got = sink.wait_messages(3, LONG);
    let mut rcpts: Vec<Vec<String>> = got
        .iter()
        .map(|m| {
            m["rcpts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect()
        })
        .collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        vec![
            vec!["a@example.net".to_owned(), "c@example.net".to_owned()],
            vec!["b@implicit.example".to_owned()],
            vec!["d@fallback.example".to_owned()]
        ]
    );
    assert!(
        backup.messages().is_empty(),
        "the less preferred MX got mail"
    );
    let delivered = daemon.wait_events("delivery", 4, LONG);
    for event in &delivered {
        let domain = event["recipient"]
            .as_str()
            .unwrap()
            .rsplit('@')
            .next()
            .unwrap();
        assert_eq!(event["route"], format!("direct:{domain}"));
        assert!(
            event["remote_host"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{event}"
        );
    }
    assert!(daemon.events_of("transient_failure").is_empty());
}

#[test]
fn null_mx_and_missing_domains_bounce_dns_failures_wait() {
    let sink = Sink::start(&[]);
    let dns = DnsServer::start(zone());
    let daemon = start(&sink, &dns);
    support::smtplib_send(
        daemon.addr,
        "app@example.com",
        &["x@nullmx.example", "y@nowhere.example", "z@broken.example"],
        "<dnsfail@test>",
    );
    let bounces = daemon.wait_events("bounce", 2, LONG);
    let by_rcpt = |r: &str| {
        bounces
            .iter()
            .find(|e| e["recipient"] == r)
            .unwrap()
            .clone()
    };
    let null = by_rcpt("x@nullmx.example");
    assert_eq!(
        (
            null["reply"]["code"].as_u64(),
            null["reply"]["enhanced"].as_str()
        ),
        (Some(556), Some("5.1.10"))
    );
    let nx = by_rcpt("y@nowhere.example");
    assert_eq!(
        (
            nx["reply"]["code"].as_u64(),
            nx["reply"]["enhanced"].as_str()
        ),
        (Some(550), Some("5.1.2"))
    );

    let deferred = daemon.wait_events("transient_failure", 1, LONG);
    assert_eq!(deferred[0]["recipient"], "z@broken.example");
    assert!(
        deferred[0]["reply"]["text"]
            .as_str()
            .unwrap()
            .contains("DNS"),
        "{}",
        deferred[0]
    );
    assert!(sink.messages().is_empty());
}

#[test]
fn a_sender_domain_is_enabled_once_its_records_are_published() {
    let sink = Sink::start(&[]);
    let dns = DnsServer::start(Vec::<(&str, RecordData)>::new());
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"app\"\n[dns]\n{}\nverify_interval = \"300ms\"\n[[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {}\n[[dns_template]]\nname = \"std\"\nrecords = [{{ kind = \"TXT\", name = \"_SenderDomain_\", value = \"v=spf1 include:spf.sendengine.test ~all\" }}, {{ kind = \"CNAME\", name = \"_SubDomain_._SenderDomain_\", value = \"bounces.sendengine.test\" }}]\n[[user_group]]\nname = \"default\"\nmarketing = [\"s\"]\ntransactional = [\"s\"]\nautoresponder = [\"s\"]\nsender_domain_management = true\ndns_template = \"std\"\n[[user]]\nname = \"app\"\n[[sender_domain]]\ndomain = \"own.example\"\nowner = \"app\"\n",
        dns.nameservers_line(),
        sink.addr.port()
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    let refused = support::smtplib_try(daemon.addr, "news@own.example", &["r@example.net"], "");
    assert!(
        refused.starts_with("550 5.7.1 Sender domain own.example is not verified"),
        "{refused}"
    );

    dns.add([
        (
            "own.example",
            RecordData::txt(&["v=spf1 include:spf.sendengine.test ~all"]),
        ),
        (
            "sl.own.example",
            RecordData::cname("bounces.sendengine.test"),
        ),
    ]);
    support::wait_for(LONG, "the domain to be enabled", || {
        let reply = support::smtplib_try(daemon.addr, "news@own.example", &["r@example.net"], "");
        (reply == "250").then_some(())
    });
    assert_eq!(sink.wait_messages(1, LONG).len(), 1);
}
