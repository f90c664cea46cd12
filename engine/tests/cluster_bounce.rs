//! Issue #17: a bounce for mail one fleet node sent, delivered to another
//! node's bounce listener, is tied to its message (tenant, campaign,
//! recipient) through the fleet's delivered index in PostgreSQL, and
//! suppresses the address. Real binaries (two nodes of one fleet, one node
//! whose database is unreachable), the real sink, one real PostgreSQL, DSNs
//! sent with Python's smtplib.
//!
//! Also: the tags name the node (40 characters); a standalone tag (mail sent
//! before the fleet) still ties on the node that sent it and, through the
//! fleet index, on the other; a tag naming a node number the fleet does not
//! have gives an untied event; PostgreSQL unreachable gives 451, not 5xx.

mod support;

use std::time::Duration;

use sendengine_bounces::verp;
use serde_json::Value;
use support::bounces::{count_events, deliver, dsn, event_for, python_missing, send_bounce};
use support::fleet::FleetPlace;
use support::services::psql;
use support::{Daemon, DaemonConfig, Sink, ctl, free_port};

const LONG: Duration = Duration::from_secs(60);

/// The master key `FleetPlace` writes, decoded: what the nodes sign with.
const FLEET_KEY: [u8; 32] = *b"sendengine-fleet-test-key-32byte";

/// One node: relays to the sink, takes bounces on `bounce_port`.
fn node_config(cluster: &str, sink_port: u16, bounce_port: u16) -> DaemonConfig {
    DaemonConfig::custom(&format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"acme\"\n\
[delivery]\nretry_schedule = [\"1s\"]\n\
[bounce_in]\nlisten = [\"127.0.0.1:{bounce_port}\"]\ndomains = [\"bounce.example.net\"]\n\
[[delivery_server]]\nname = \"s\"\nhost = \"127.0.0.1\"\nport = {sink_port}\nmail_from_domain = \"bounce.example.net\"\n\
[[user_group]]\nname = \"default\"\nmarketing = [\"s\"]\ntransactional = [\"s\"]\nautoresponder = [\"s\"]\n\
[[user]]\nname = \"acme\"\n\
{cluster}"
    ))
}

/// Starts a fleet node (ready once it knows its number, PostgreSQL being up).
fn start_node(place: &FleetPlace, name: &str, sink: &Sink, bounce_port: u16) -> Daemon {
    let cluster = place.node_config(name);
    Daemon::start(node_config(&cluster, sink.addr.port(), bounce_port))
}

#[test]
fn a_bounce_for_node_a_mail_at_node_b_is_tied_and_suppresses() {
    if python_missing() {
        return;
    }
    let Some(place) = FleetPlace::new("cluster_bounce", false) else {
        return;
    };
    let sink = Sink::start(&[]);
    let (a_port, b_port) = (free_port(), free_port());
    let a = start_node(&place, "a", &sink, a_port);
    let b = start_node(&place, "b", &sink, b_port);
    let (id, path) = deliver(&a, &sink, "gone@example.net", "<m1@app.test>");
    let tag = verp::tag_from_address(&path).unwrap();
    assert_eq!(tag.len(), verp::FLEET_TAG_LEN, "a fleet tag: {path}");
    let tagged = verp::decode(&tag, &secrets().derived("verp")).unwrap();
    let a_number = tagged.node.expect("the tag names node a");
    assert_eq!(sendengine_queue::format_id(tagged.id), id);

    // A's delivered row reaches PostgreSQL, under A's number.
    let row_sql = format!(
        "SELECT tenant || '|' || campaign || '|' || recipient FROM delivered WHERE node = {a_number} AND message_id = {}",
        tagged.id as i64
    );
    let row = support::wait_for(LONG, "A's row in the fleet index", || {
        Some(psql(&place.database, &row_sql)).filter(|r| !r.trim().is_empty())
    });
    assert_eq!(row.trim(), "acme|spring|gone@example.net");

    // The DSN reaches B: tied to A's message, suppressed on B.
    let email = dsn(&path, "gone@example.net", "<m1@app.test>");
    assert_eq!(send_bounce(b_port, &path, &email).as_deref(), Some("250"));
    let bounce = event_for(&b, "async_bounce", "gone@example.net");
    assert_eq!(bounce["message_id"], id.as_str());
    assert_eq!(bounce["tenant"], "acme");
    assert_eq!(bounce["campaign"], "spring");
    assert_eq!(bounce["header_message_id"], "<m1@app.test>");
    assert_eq!(bounce["bounce_type"], "hard");
    assert_eq!(bounce["sender"], path.as_str());
    event_for(&b, "suppression", "gone@example.net");
    let check = ctl(
        &b,
        &[
            "suppression",
            "check",
            "gone@example.net",
            "--tenant",
            "acme",
        ],
    );
    assert_eq!(check["suppressed"], true, "{check}");
    // Fleet-wide: B shares the suppression through PostgreSQL, and node A
    // (which sent the mail) has it too within a few seconds.
    let args = [
        "suppression",
        "check",
        "gone@example.net",
        "--tenant",
        "acme",
    ];
    support::wait_for(Duration::from_secs(5), "the suppression on node a", || {
        (ctl(&a, &args)["suppressed"] == true).then_some(())
    });

    // The same DSN again at B: accepted, nothing new.
    assert_eq!(send_bounce(b_port, &path, &email).as_deref(), Some("250"));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_events(&b, "async_bounce", "gone@example.net"), 1);

    standalone_and_unknown_tags(&a, &b, (a_port, b_port), &sink);
}

/// Tags other than this fleet's: a standalone tag (mail sent before the
/// fleet) and a tag naming a node number nobody has.
fn standalone_and_unknown_tags(a: &Daemon, b: &Daemon, ports: (u16, u16), sink: &Sink) {
    let key = secrets().derived("verp");
    let (id, _) = deliver(a, sink, "old@example.net", "<m2@app.test>");
    let id = sendengine_queue::parse_id(&id).unwrap();
    let old = verp::return_path("bounces", &verp::encode(id, 0, &key), "bounce.example.net");
    // On the node that sent it: tied locally, as before the fleet.
    let email = dsn(&old, "old@example.net", "<m2@app.test>");
    assert_eq!(send_bounce(ports.0, &old, &email).as_deref(), Some("250"));
    assert_eq!(
        event_for(a, "async_bounce", "old@example.net")["tenant"],
        "acme"
    );
    // On the other: tied through the fleet index by (message id, recipient).
    assert_eq!(send_bounce(ports.1, &old, &email).as_deref(), Some("250"));
    let at_b = event_for(b, "async_bounce", "old@example.net");
    assert_eq!(at_b["tenant"], "acme");
    assert_eq!(at_b["campaign"], "spring");

    // A node number the fleet does not have: accepted (the HMAC holds),
    // reported with what the DSN says and no tenant, and logged.
    let stranger = verp::encode_for_node(999_999, id, 0, &key);
    let stranger = verp::return_path("bounces", &stranger, "bounce.example.net");
    let email = dsn(&stranger, "stranger@example.net", "<m3@app.test>");
    assert_eq!(
        send_bounce(ports.1, &stranger, &email).as_deref(),
        Some("250")
    );
    let untied = event_for(b, "async_bounce", "stranger@example.net");
    assert_eq!(untied["tenant"], Value::Null);
    assert_eq!(untied["campaign"], Value::Null);
    b.wait_stderr("number 999999, which no node of this fleet has", LONG);
}

#[test]
fn without_its_database_a_node_answers_bounces_for_other_nodes_451() {
    if python_missing() {
        return;
    }
    let Some(place) = FleetPlace::new("cluster_bounce_down", false) else {
        return;
    };
    let sink = Sink::start(&[]);
    let port = free_port();
    // A database port nothing listens on.
    let dead = place
        .node_config("c")
        .replace(&place.database, "postgres://postgres@127.0.0.1:1/none");
    let c = Daemon::start(node_config(&dead, sink.addr.port(), port));
    let key = secrets().derived("verp");
    let path = verp::return_path(
        "bounces",
        &verp::encode_for_node(1, 42 << 20, 0, &key),
        "bounce.example.net",
    );
    let email = dsn(&path, "later@example.net", "<m4@app.test>");
    let reply = send_bounce(port, &path, &email).unwrap();
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    assert_eq!(count_events(&c, "async_bounce", "later@example.net"), 0);
    // Mail still goes out meanwhile, with a standalone tag.
    let (_, sent) = deliver(&c, &sink, "still@example.net", "<m5@app.test>");
    let tag = verp::tag_from_address(&sent).unwrap();
    assert_eq!(tag.len(), verp::TAG_LEN, "{sent}");
}

fn secrets() -> sendengine::secrets::Secrets {
    sendengine::secrets::Secrets::from_key(FLEET_KEY)
}
