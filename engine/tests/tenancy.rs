//! Tenants, channels and routing against the real daemon and real sinks:
//! per-channel servers, failover and return, sending limits (kept across a
//! restart), sender-domain policy, and transactional mail overtaking a big
//! campaign.

mod support;

use std::time::Duration;

use support::{Daemon, DaemonConfig, Sink, free_port, target_dir};

const LONG: Duration = Duration::from_secs(60);

fn server(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[delivery_server]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntimeout = \"5s\"\nmax_connections = 5\n{extra}\n"
    )
}

const SMTP_IN: &str = "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"app\"\n";

fn send(daemon: &Daemon, from: &str, rcpts: &[&str], headers: &str) -> String {
    support::smtplib_try(daemon.addr, from, rcpts, headers)
}

#[test]
fn channels_go_to_their_own_servers_with_the_groups_footer() {
    let bulk = Sink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap().to_owned();
    let fast = Sink::start(&["--store-dir", &store]);
    let config = format!(
        "{SMTP_IN}{}{}[[user_group]]\nname = \"g\"\nmarketing = [\"bulk\"]\ntransactional = [\"fast\"]\nautoresponder = [\"fast\"]\ntext_footer = \"-- sent by sendengine\"\nx_mailer = \"Acme Mailer\"\n[[user]]\nname = \"app\"\ngroup = \"g\"\n",
        server("bulk", bulk.addr.port(), ""),
        server("fast", fast.addr.port(), ""),
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    assert_eq!(
        send(
            &daemon,
            "a@example.com",
            &["m@example.net"],
            "X-Campaign-Id: spring|"
        ),
        "250"
    );
    assert_eq!(
        send(
            &daemon,
            "a@example.com",
            &["t@example.net"],
            "X-Channel: transactional|"
        ),
        "250"
    );

    let m = bulk.wait_messages(1, LONG);
    assert_eq!(m[0]["rcpts"][0], "m@example.net");
    let t = fast.wait_messages(1, LONG);
    assert_eq!(t[0]["rcpts"][0], "t@example.net");
    let stored = std::fs::read_to_string(dir.path().join(format!("{}.eml", t[0]["seq"]))).unwrap();
    assert!(
        stored.contains("Hello.\r\n-- sent by sendengine"),
        "{stored}"
    );
    assert!(stored.contains("X-Mailer: Acme Mailer\r\n"), "{stored}");

    let delivered = daemon.wait_events("delivery", 2, LONG);
    let by_channel = |c: &str| {
        delivered
            .iter()
            .find(|e| e["channel"] == c)
            .unwrap()
            .clone()
    };
    assert_eq!(by_channel("marketing")["route"], "bulk");
    assert_eq!(by_channel("marketing")["campaign"], "spring");
    assert_eq!(by_channel("transactional")["route"], "fast");
    assert_eq!(by_channel("transactional")["tenant"], "app");
    assert_eq!(by_channel("transactional")["group"], "g");
}

#[test]
fn first_server_down_the_second_takes_over_and_traffic_returns() {
    let primary_port = free_port();
    let backup = Sink::start(&[]);
    let config = format!(
        "{SMTP_IN}[delivery]\nfailover_backoff = \"1s\"\nretry_schedule = [\"1s\"]\n{}{}[[user_group]]\nname = \"default\"\nmarketing = [\"primary\", \"backup\"]\ntransactional = [\"primary\", \"backup\"]\nautoresponder = [\"primary\", \"backup\"]\n[[user]]\nname = \"app\"\n",
        server("primary", primary_port, ""),
        server("backup", backup.addr.port(), ""),
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));

    assert_eq!(
        send(&daemon, "a@example.com", &["one@example.net"], ""),
        "250"
    );
    let got = backup.wait_messages(1, LONG);
    assert_eq!(got[0]["rcpts"][0], "one@example.net");
    let d = daemon.wait_events("delivery", 1, LONG);
    assert_eq!(d[0]["route"], "backup");
    assert_eq!(
        d[0]["attempt"], 1,
        "failover is not a retry: no deferral in between"
    );
    assert!(daemon.events_of("transient_failure").is_empty());

    // The first server comes back: after the back-off, traffic returns to it.
    let primary = Sink::start_on(primary_port, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        send(&daemon, "a@example.com", &["two@example.net"], ""),
        "250"
    );
    let got = primary.wait_messages(1, LONG);
    assert_eq!(got[0]["rcpts"][0], "two@example.net");
    assert_eq!(backup.messages().len(), 1);
}

#[test]
fn a_message_over_the_first_servers_size_goes_to_the_next() {
    let small = Sink::start(&["--max-size", "2000"]);
    let large = Sink::start(&[]);
    let config = format!(
        "{SMTP_IN}{}{}[[user_group]]\nname = \"default\"\nmarketing = [\"small\", \"large\"]\ntransactional = [\"small\"]\nautoresponder = [\"small\"]\n[[user]]\nname = \"app\"\n",
        server("small", small.addr.port(), ""),
        server("large", large.addr.port(), ""),
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    let big = format!("X-Filler: {}|", "x".repeat(70)).repeat(60);
    assert_eq!(
        send(&daemon, "a@example.com", &["big@example.net"], &big),
        "250"
    );
    let got = large.wait_messages(1, LONG);
    assert_eq!(got[0]["rcpts"][0], "big@example.net");
    // The small server stays up for what fits it.
    assert_eq!(
        send(&daemon, "a@example.com", &["small@example.net"], ""),
        "250"
    );
    small.wait_messages(1, LONG);
    // With no next server, the refusal names the limit.
    let refused = format!("X-Channel: transactional|{big}");
    assert_eq!(
        send(&daemon, "a@example.com", &["t@example.net"], &refused),
        "250"
    );
    let bounce = daemon.wait_events("bounce", 1, LONG);
    let text = bounce[0]["reply"]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(text.contains("limit of 2000 bytes"), "{text}");
}

#[test]
fn daily_limit_refuses_queues_nothing_and_survives_a_restart() {
    let sink = Sink::start(&[]);
    let config = format!(
        "{SMTP_IN}{}[[user_group]]\nname = \"default\"\nmarketing = [\"s\"]\ntransactional = [\"s\"]\nautoresponder = [\"s\"]\ndaily_limit = 3\n[[user]]\nname = \"app\"\n",
        server("s", sink.addr.port(), "")
    );
    let mut daemon = Daemon::start(DaemonConfig::custom(&config));
    assert_eq!(
        send(
            &daemon,
            "a@example.com",
            &["r1@example.net", "r2@example.net"],
            ""
        ),
        "250"
    );
    let refused = send(
        &daemon,
        "a@example.com",
        &["r3@example.net", "r4@example.net"],
        "",
    );
    assert!(
        refused.starts_with("451 4.7.1 The daily sending limit of 3 recipients for user app is reached (2 used); it resets at "),
        "{refused}"
    );
    assert_eq!(
        daemon.events_of("reception").len(),
        2,
        "nothing of the refused message was queued"
    );

    let status = daemon.stop();
    assert!(status.success());
    daemon.restart();
    let still = send(
        &daemon,
        "a@example.com",
        &["r3@example.net", "r4@example.net"],
        "",
    );
    assert!(
        still.starts_with("451 4.7.1"),
        "the count survived the restart: {still}"
    );
    assert_eq!(
        send(&daemon, "a@example.com", &["r3@example.net"], ""),
        "250",
        "exactly the limit"
    );
    assert!(send(&daemon, "a@example.com", &["r4@example.net"], "").starts_with("451"));
    assert_eq!(sink.wait_messages(2, LONG).len(), 2);
}

#[test]
fn sender_domains_verified_own_shared_default_and_unverified() {
    let sink = Sink::start(&[]);
    let config = format!(
        "{SMTP_IN}{}[[user_group]]\nname = \"default\"\nmarketing = [\"s\"]\ntransactional = [\"s\"]\nautoresponder = [\"s\"]\nsender_domain_management = true\ndefault_sender_domain = \"shared.example\"\ndefault_domain_limit = 2\n[[user]]\nname = \"app\"\n[[sender_domain]]\ndomain = \"own.example\"\nowner = \"app\"\n",
        server("s", sink.addr.port(), "")
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    // No template: the own domain is enabled at once.
    assert_eq!(
        send(&daemon, "news@own.example", &["r@example.net"], ""),
        "250"
    );
    let refused = send(&daemon, "news@other.example", &["r@example.net"], "");
    assert!(
        refused.starts_with("550 5.7.1 Sender domain other.example is not verified for user app"),
        "{refused}"
    );
    assert_eq!(
        send(&daemon, "x@shared.example", &["r@example.net"], ""),
        "250"
    );
    assert_eq!(
        send(&daemon, "x@shared.example", &["r@example.net"], ""),
        "250"
    );
    let over = send(&daemon, "x@shared.example", &["r@example.net"], "");
    assert!(
        over.contains("rolling 30-day limit of the shared default sender domain of 2"),
        "{over}"
    );
    assert!(over.starts_with("451 4.7.1"), "{over}");
    assert_eq!(sink.wait_messages(3, LONG).len(), 3);
}

#[test]
fn a_big_campaign_does_not_delay_transactional_mail() {
    let sink = Sink::start(&[]);
    // One message a second: the campaign below needs some 50 seconds to
    // drain, far longer than it takes to inject even on a loaded machine.
    let config = format!(
        "{SMTP_IN}{}",
        server(
            "s",
            sink.addr.port(),
            "rate_per_second = 1.0\nmax_messages_per_connection = 100000"
        )
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));

    // 50,000 recipients: 50 messages of 1,000 recipients, all marketing.
    let _ = support::sink_binary();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(target_dir().join("sendengine-loadgen"))
        .args(["--server", &daemon.addr.to_string()])
        .args([
            "--messages",
            "50",
            "--rcpts",
            "1000",
            "--connections",
            "10",
            "--size",
            "2000",
        ])
        .output()
        .expect("run sendengine-loadgen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("campaign injected in {:?}", started.elapsed());

    // Order, not time, is the claim: the urgent message overtakes every
    // campaign message still queued when it arrives, so at most the few
    // the route had already taken may reach the sink before it.
    let delivered_before = sink.messages().len();
    assert!(
        delivered_before < 50,
        "the campaign drained before the urgent message was sent; nothing to overtake"
    );
    assert_eq!(
        send(
            &daemon,
            "a@example.com",
            &["urgent@example.net"],
            "X-Channel: transactional|"
        ),
        "250"
    );
    // Counted again once it is queued: on a loaded machine the send itself
    // may take seconds, and the campaign keeps its pace meanwhile.
    let delivered_at_arrival = sink.messages().len();
    let urgent = support::wait_for(LONG, "the transactional delivery", || {
        daemon
            .events_of("delivery")
            .into_iter()
            .find(|e| e["recipient"] == "urgent@example.net")
    });
    let got = sink.wait_messages(delivered_before + 1, LONG);
    let position = got
        .iter()
        .position(|m| m["rcpts"][0] == "urgent@example.net")
        .expect("the urgent message at the sink");
    eprintln!(
        "transactional waited {} ms; arrived {}th, {delivered_at_arrival} campaign messages were delivered before it was queued",
        urgent["queue_time_ms"],
        position + 1
    );
    assert!(
        position <= delivered_at_arrival + 2,
        "it waited behind the campaign's backlog: {} campaign messages went first, {delivered_at_arrival} had gone before it was queued",
        position
    );
}

#[test]
fn a_user_cannot_own_more_sender_domains_than_the_group_allows() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "hostname = \"mta.test\"\n[spool]\ndir = \"{d}/spool\"\n{SMTP_IN}{}[[user_group]]\nname = \"default\"\nmarketing = [\"s\"]\ntransactional = [\"s\"]\nautoresponder = [\"s\"]\nsender_domains_limit = 1\n[[user]]\nname = \"app\"\n[[sender_domain]]\ndomain = \"one.example\"\nowner = \"app\"\n[[sender_domain]]\ndomain = \"two.example\"\nowner = \"app\"\n",
        server("s", 9, ""),
        d = dir.path().display()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = std::process::Command::new(support::daemon_binary())
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("user app would own 2 sender domains; group default allows 1"),
        "{err}"
    );
}

#[test]
fn return_paths_from_the_sender_domain_or_the_users_sender_info() {
    let verp_sink = Sink::start(&[]);
    let info_sink = Sink::start(&[]);
    let config = format!(
        "{SMTP_IN}{}{}[[user_group]]\nname = \"g\"\nmarketing = [\"verp\"]\ntransactional = [\"info\"]\nautoresponder = [\"info\"]\nsender_domain_management = true\n[[user]]\nname = \"app\"\ngroup = \"g\"\nsender_email = \"owner@own.example\"\n[[sender_domain]]\ndomain = \"own.example\"\nowner = \"app\"\n",
        server("verp", verp_sink.addr.port(), ""),
        server("info", info_sink.addr.port(), "sender_info_as_mfrom = true"),
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    // No mail_from_domain on the server: the enabled sender domain's sl. subdomain.
    assert_eq!(
        send(&daemon, "news@own.example", &["a@example.net"], ""),
        "250"
    );
    let got = verp_sink.wait_messages(1, LONG);
    let from = got[0]["mail_from"].as_str().unwrap();
    assert!(
        from.starts_with("bounces+") && from.ends_with("@sl.own.example"),
        "{from}"
    );
    // sender_info_as_mfrom: the user's own address, no VERP.
    assert_eq!(
        send(
            &daemon,
            "news@own.example",
            &["b@example.net"],
            "X-Channel: transactional|"
        ),
        "250"
    );
    let got = info_sink.wait_messages(1, LONG);
    assert_eq!(got[0]["mail_from"], "owner@own.example");
}

#[test]
fn mail_taken_while_the_groups_only_server_is_disabled_leaves_as_that_server_sends() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(&["--store-dir", dir.path().to_str().unwrap()]);
    let config = format!(
        "{SMTP_IN}{}[[user_group]]\nname = \"g\"\nmarketing = [\"only\"]\ntransactional = [\"only\"]\nautoresponder = [\"only\"]\n[[user]]\nname = \"app\"\ngroup = \"g\"\n",
        server(
            "only",
            sink.addr.port(),
            "mail_from_domain = \"bounce.example.net\"\nenforced_from = \"News <news@brand.example>\"",
        ),
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    support::ctl(&daemon, &["server", "disable", "only"]);
    assert_eq!(
        send(&daemon, "app@example.com", &["a@example.net"], ""),
        "250"
    );
    // It waits, and the queue says why in the operator's words.
    support::wait_for(LONG, "the reason in the queue", || {
        let listed = support::ctl(&daemon, &["queue", "list"]).to_string();
        listed
            .contains("is enabled for marketing mail")
            .then_some(())
    });
    assert!(sink.messages().is_empty());
    support::ctl(&daemon, &["server", "enable", "only"]);
    support::ctl(&daemon, &["queue", "flush"]);
    let got = sink.wait_messages(1, LONG);
    let mail_from = got[0]["mail_from"].as_str().unwrap();
    assert!(
        mail_from.starts_with("bounces+") && mail_from.ends_with("@bounce.example.net"),
        "the server's VERP return path: {mail_from}"
    );
    let stored = dir.path().join(format!("{}.eml", got[0]["seq"]));
    let body = String::from_utf8_lossy(&std::fs::read(stored).unwrap()).into_owned();
    assert!(
        body.contains("From: News <news@brand.example>"),
        "the server's From: {body}"
    );
}

/// Runs `sendengine --check-config` on `text`; returns (success, stderr).
fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!("[spool]\ndir = \"{}/spool\"\n{text}", dir.path().display()),
    )
    .unwrap();
    let out = std::process::Command::new(support::daemon_binary())
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn groups_with_relay_networks_need_a_default_user() {
    let servers = server("alloc", 2526, "") + &server("spare", 2527, "");
    let group = "[[user_group]]\nname = \"g\"\nmarketing = [\"alloc\"]\ntransactional = [\"alloc\"]\nautoresponder = [\"alloc\"]\n[[user]]\nname = \"app\"\ngroup = \"g\"\n";
    let tenantless = "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n";
    let (ok, err) = check_config(&format!("{tenantless}{servers}{group}"));
    assert!(!ok, "a config with groups and tenantless relay mail passed");
    assert!(err.contains("smtp_in.default_user"), "{err}");

    // A user left in the default group while groups exist has none.
    let (ok, err) = check_config(&format!(
        "{SMTP_IN}{servers}{group}[[user]]\nname = \"orphan\"\n"
    ));
    assert!(!ok);
    assert!(err.contains("user[1].group"), "{err}");

    // With a tenant for relay mail, or with no group at all, it starts.
    let (ok, err) = check_config(&format!("{SMTP_IN}{servers}{group}"));
    assert!(ok, "{err}");
    let (ok, err) = check_config(&format!("{tenantless}{servers}"));
    assert!(ok, "{err}");
}

#[test]
fn a_server_no_group_allocates_never_receives_mail() {
    let allocated = Sink::start(&[]);
    let unallocated = Sink::start(&[]);
    // Named to sort first: an all-servers fallback would pick it.
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n{}{}",
        server("aaa-unallocated", unallocated.addr.port(), ""),
        server("alloc", allocated.addr.port(), ""),
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));
    // Single-tenant (no group): every server serves, as the quick start does.
    assert_eq!(
        send(&daemon, "a@example.com", &["one@example.net"], ""),
        "250"
    );
    unallocated.wait_messages(1, LONG);

    // Groups arrive through the admin socket; relay mail has no tenant now.
    let group = serde_json::json!({"name": "g", "marketing": ["alloc"],
        "transactional": ["alloc"], "autoresponder": ["alloc"]});
    let put = support::sendctl_in(&daemon, &["group", "put"], Some(&group.to_string()));
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let refused = send(&daemon, "a@example.com", &["two@example.net"], "");
    assert!(refused.starts_with("550 5.7.1"), "{refused}");
    assert!(refused.contains("smtp_in.default_user"), "{refused}");

    // A tenant in the group: its mail goes to the group's server only.
    let auth_send = r#"
import smtplib, sys
with smtplib.SMTP(sys.argv[1], int(sys.argv[2]), timeout=30) as s:
    s.login("app", "pw")
    s.sendmail("a@example.com", ["three@example.net"], "From: a@example.com\r\nSubject: t\r\n\r\nx\r\n")
print("sent")
"#;
    support::ctl(
        &daemon,
        &[
            "user",
            "put",
            "--name",
            "app",
            "--group",
            "g",
            "--password",
            "pw",
        ],
    );
    let out = support::python(
        auth_send,
        &[daemon.addr.ip().to_string(), daemon.addr.port().to_string()],
    )
    .expect("python3 is required for the integration tests");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    allocated.wait_messages(1, LONG);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        unallocated.messages().len(),
        1,
        "only the single-tenant message"
    );
    assert_eq!(allocated.messages().len(), 1);
}
