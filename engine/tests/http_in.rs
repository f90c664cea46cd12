//! The HTTP injection API (`[http_in]`) against the real daemon, with
//! Python's `urllib` as the client: KumoMTA's request bodies (from its
//! documentation, as they are), raw and built content, per-recipient
//! substitutions and metadata, attachments, API keys (401), every
//! malformed case (400), bounds (413), a tiny sending limit (429),
//! idempotency keys, kill -9 in the middle of a request, HTTPS, and schemathesis
//! checking the server against its own OpenAPI document.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::http_api::{Api, CLIENT, recipients, sink_on};
use support::{ctl, sendctl};

/// KumoMTA's documentation, "Template Substitution", as it is.
const KUMO_TEMPLATE_EXAMPLE: &str = r#"{
    "envelope_sender": "noreply@example.com",
    "content": "To: \"{{ name }}\" <{{ email }}>\nSubject: hello\n\nHello {{ name }}!",
    "recipients": [
        {
            "email": "recipient@example.com",
            "name": "John Smith"
        }
    ]
}"#;

/// KumoMTA's documentation, the `content` object example (its inline
/// comments taken out: comments are not JSON, as its page says).
const KUMO_BUILDER_EXAMPLE: &str = r#"{
    "envelope_sender": "noreply@example.com",
    "content": {
        "text_body": "This is the plain text part",
        "html_body": "<p>This is the <b>HTML</b> part</p>",
        "amp_html_body": "<!doctype html><html amp4email>...</html>",
        "attachments": [
            {
                "data": "R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7",
                "base64": true,
                "content_type": "image/gif",
                "content_id": "my-image",
                "file_name": "pixel.gif"
            }
        ],
        "from": {
            "email": "someone@example.com",
            "name": "Someone"
        },
        "subject": "This is the subject",
        "reply_to": {
            "email": "help@example.com",
            "name": "Help"
        },
        "headers": {
            "X-Something": "Something!"
        }
    },
    "recipients": [
        {
            "email": "recipient@example.com"
        }
    ]
}"#;

/// KumoMTA's user guide, "Injecting Using HTTP" (the curl example's body).
const KUMO_CURL_EXAMPLE: &str = r#"
{"envelope_sender": "noreply@example.com",
 "content": "Subject: hello\n\nHello there",
 "recipients": [{"email": "recipient@example.com"}]
}"#;

#[test]
fn kumomta_bodies_templates_attachments_and_metadata() {
    let Some(api) = Api::start("", "", false) else {
        return;
    };
    for example in [
        KUMO_TEMPLATE_EXAMPLE,
        KUMO_BUILDER_EXAMPLE,
        KUMO_CURL_EXAMPLE,
    ] {
        let r = api.post(example);
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(
            r["body"],
            json!({"success_count": 1, "fail_count": 0, "failed_recipients": [], "errors": []})
        );
    }
    let personal = json!({
        "envelope_sender": "app@example.com",
        "substitutions": {"sale": "Spring"},
        "content": "Subject: {{ sale }} for {{ name }}\n\nHello {{ name }}, code {{ code }}.\n",
        "recipients": [
            {"email": "ann@example.net", "name": "Ann", "substitutions": {"code": "A1"},
             "metadata": {"crm_id": 7}},
            {"email": "bob@example.net", "name": "Bob", "substitutions": {"code": "B2"}},
            {"email": "cid@example.net", "substitutions": {"code": {"nested": true}, "n": "x"}}
        ],
        "sendengine": {"channel": "transactional", "campaign": "spring"}
    });
    let r = api.post(&personal.to_string());
    assert_eq!(r["body"]["success_count"], 3, "{r}");
    let delivered = api.delivered(6);
    let text_for = |rcpt: &str| {
        let found = delivered.iter().find(|(r, _)| r == &[rcpt.to_owned()]);
        found.map(|(_, eml)| eml.clone()).unwrap_or_default()
    };
    let ann = text_for("ann@example.net");
    assert!(ann.contains("Subject: Spring for Ann"), "{ann}");
    assert!(ann.contains("Hello Ann, code A1."), "{ann}");
    assert!(
        !ann.contains("X-Channel"),
        "control headers are removed: {ann}"
    );
    assert!(text_for("bob@example.net").contains("Hello Bob, code B2."));
    let doc = text_for("recipient@example.com");
    assert!(!doc.is_empty());
    let built = delivered
        .iter()
        .map(|(_, eml)| eml)
        .find(|e| e.contains("X-Something"));
    let built = built.expect("the built example arrived");
    for part in [
        "multipart/related",
        "Content-ID: <my-image>",
        "text/x-amp-html",
        "Subject: This is the subject",
    ] {
        assert!(built.contains(part), "{part} in {built}");
    }
    let receptions = api
        .daemon
        .wait_events("reception", 6, Duration::from_secs(10));
    let ann_event = receptions
        .iter()
        .find(|e| e["recipient"] == "ann@example.net")
        .unwrap();
    assert_eq!(ann_event["metadata"], json!({"crm_id": 7}));
    assert_eq!(ann_event["channel"], "transactional");
    assert_eq!(ann_event["campaign"], "spring");
    assert_eq!(ann_event["tenant"], "app");
    let deliveries = api
        .daemon
        .wait_events("delivery", 6, Duration::from_secs(10));
    let ann_delivery = deliveries
        .iter()
        .find(|e| e["recipient"] == "ann@example.net")
        .unwrap();
    assert_eq!(
        ann_delivery["metadata"],
        json!({"crm_id": 7}),
        "metadata reaches every event"
    );
}

#[test]
fn keys_malformed_requests_and_bounds() {
    let Some(api) = Api::start("max_body_size = \"64KB\"\nmax_recipients = 5", "", false) else {
        return;
    };
    let ok = KUMO_CURL_EXAMPLE;
    // 401: no key, a wrong key, a revoked key.
    assert_eq!(api.post_as("", ok, json!({}))["status"], 401);
    let wrong = api.post_as("se_000000000000_nope", ok, json!({}));
    assert_eq!(wrong["status"], 401);
    assert_eq!(wrong["body"]["error"]["field"], "Authorization");
    let second = ctl(&api.daemon, &["user", "api-key", "create", "app"]);
    let token = second["token"].as_str().unwrap();
    assert_eq!(api.post_as(token, ok, json!({}))["status"], 200);
    let listed = ctl(&api.daemon, &["user", "api-key", "list", "app"]);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains("hash"),
        "hashes never leave: {listed}"
    );
    let id = second["id"].as_str().unwrap();
    ctl(
        &api.daemon,
        &["user", "api-key", "revoke", "app", "--id", id],
    );
    assert_eq!(api.post_as(token, ok, json!({}))["status"], 401);
    let user = ctl(&api.daemon, &["user", "get", "app"]);
    assert!(!user.to_string().contains("hash"), "{user}");
    // Keys created at the same moment are all kept: each is added to the
    // keys as they are, not to a list read before another was added.
    let create: Vec<String> = ["user", "api-key", "create", "app"]
        .map(String::from)
        .into();
    let created = support::ctl_at_once(&api.daemon, &vec![create; 8]);
    let tokens = created.iter().map(|key| key["token"].as_str().unwrap());
    let listed = ctl(&api.daemon, &["user", "api-key", "list", "app"]);
    assert_eq!(listed.as_array().unwrap().len(), 9, "{listed}");
    for token in tokens {
        assert_eq!(api.post_as(token, ok, json!({}))["status"], 200);
    }
    assert!(
        !sendctl(&api.daemon, &["user", "api-key", "revoke", "app"])
            .status
            .success()
    );

    // 400, naming the field.
    let rcpt = r#""recipients":[{"email":"a@example.net"}]"#;
    for (body, field) in [
        ("{not json".to_owned(), ""),
        (
            format!(r#"{{"envelope_sender":"a@b.c","content":"x",{rcpt},"colour":1}}"#),
            "colour",
        ),
        (
            format!(r#"{{"envelope_sender":"not an address","content":"x",{rcpt}}}"#),
            "envelope_sender",
        ),
        (
            r#"{"envelope_sender":"a@b.c","content":"x","recipients":[{"email":"nope"}]}"#.into(),
            "recipients[0].email",
        ),
        (
            r#"{"envelope_sender":"a@b.c","content":"x","recipients":[{"emial":"a@b.c"}]}"#.into(),
            "recipients[0]",
        ),
        (
            format!(r#"{{"envelope_sender":"a@b.c",{rcpt}}}"#),
            "content",
        ),
        (
            format!(r#"{{"envelope_sender":"a@b.c","content":"{{% if %}}",{rcpt}}}"#),
            "content",
        ),
        (
            format!(
                r#"{{"envelope_sender":"a@b.c","content":{{"text_body":"t","attachments":[{{"data":"!!","base64":true,"content_type":"a/b"}}]}},{rcpt}}}"#
            ),
            "content.attachments[0].data",
        ),
        (
            format!(
                r#"{{"envelope_sender":"a@b.c","content":"x",{rcpt},"sendengine":{{"chanel":"x"}}}}"#
            ),
            "sendengine",
        ),
        (
            format!(
                r#"{{"envelope_sender":"a@b.c","content":"x",{rcpt},"template_dialect":"Handlebars"}}"#
            ),
            "template_dialect",
        ),
    ] {
        let r = api.post(&body);
        assert_eq!(r["status"], 400, "{body}: {r}");
        assert_eq!(r["body"]["error"]["field"], field, "{body}: {r}");
        assert!(!r["body"]["error"]["message"].as_str().unwrap().is_empty());
    }
    // A template that fails for one recipient fails that recipient only.
    let r = api.post(
        r#"{"envelope_sender":"a@b.c","content":"Subject: s\n\n{{ n + 1 }}",
            "recipients":[{"email":"a@example.net","substitutions":{"n":1}},
                          {"email":"b@example.net","substitutions":{"n":"text"}}]}"#,
    );
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["success_count"], 1);
    assert_eq!(r["body"]["failed_recipients"], json!(["b@example.net"]));
    assert!(
        r["body"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("template error"),
        "{r}"
    );

    // 413: the body, and the recipient list.
    let big = json!({"envelope_sender": "a@b.c", "content": "x".repeat(70_000),
                     "recipients": [{"email": "a@example.net"}]});
    assert_eq!(api.post(&big.to_string())["status"], 413);
    let many = json!({"envelope_sender": "a@b.c", "content": "x", "recipients": recipients(6)});
    let r = api.post(&many.to_string());
    assert_eq!(r["status"], 413);
    assert_eq!(r["body"]["error"]["field"], "recipients");

    // The OpenAPI document is served, without a key.
    let out = Command::new("python3")
        .args([
            "-c",
            CLIENT,
            &format!("{}/api/openapi.json", api.url),
            "",
            "",
            "{}",
        ])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], 200);
    assert_eq!(doc["body"]["openapi"], "3.0.3");
}

#[test]
fn idempotency_keys_and_a_tiny_limit() {
    let group = "[[user_group]]\nname = \"default\"\nmarketing = [\"test-sink\"]\n\
        transactional = [\"test-sink\"]\nautoresponder = [\"test-sink\"]\ndaily_limit = 3\n";
    let Some(api) = Api::start("", group, false) else {
        return;
    };
    let body = json!({"envelope_sender": "a@example.com", "content": "Subject: s\n\nhi {{ i }}\n",
                      "recipients": recipients(2), "sendengine": {"idempotency_key": "order-1"}});
    let first = api.post(&body.to_string());
    assert_eq!(first["status"], 200, "{first}");
    let again = api.post(&body.to_string());
    assert_eq!(
        again["body"], first["body"],
        "a retry gets the first answer"
    );
    let mut other = body.clone();
    other["recipients"] = json!(recipients(1));
    let conflict = api.post(&other.to_string());
    assert_eq!(conflict["status"], 409, "{conflict}");
    assert_eq!(
        conflict["body"]["error"]["field"],
        "sendengine.idempotency_key"
    );
    // The header does the same as the field.
    let plain = json!({"envelope_sender": "a@example.com", "content": "Subject: s\n\nhi\n",
                       "recipients": recipients(1)});
    let by_header = json!({"Idempotency-Key": "order-2"});
    let r = api.post_as(&api.token, &plain.to_string(), by_header.clone());
    assert_eq!(r["body"]["success_count"], 1);
    api.post_as(&api.token, &plain.to_string(), by_header);
    // 3 recipients queued: the daily limit of 3 is reached.
    let limited = api.post(&plain.to_string());
    assert_eq!(limited["status"], 429, "{limited}");
    assert_eq!(limited["headers"]["retry-after"], "60");
    assert_eq!(limited["body"]["success_count"], 0);
    assert!(
        limited["body"]["errors"][0]
            .as_str()
            .unwrap()
            .contains("daily sending limit"),
        "{limited}"
    );
    let delivered = api.delivered(3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        api.sink.as_ref().unwrap().messages().len(),
        3,
        "nothing was queued twice"
    );
    assert_eq!(delivered.len(), 3);
}

#[test]
fn an_idempotency_key_is_given_once_or_the_same_in_header_and_field() {
    let Some(api) = Api::start("", "", false) else {
        return;
    };
    let plain = json!({"envelope_sender": "a@example.com", "content": "Subject: s\n\nhi\n",
                       "recipients": recipients(1)});
    let mut both = plain.clone();
    both["sendengine"] = json!({"idempotency_key": "k1"});
    // The same key in the header and the field is one key: a retry gets
    // the first answer.
    let first = api.post_as(
        &api.token,
        &both.to_string(),
        json!({"Idempotency-Key": "k1"}),
    );
    assert_eq!(first["status"], 200, "{first}");
    assert_eq!(first["body"]["success_count"], 1, "{first}");
    let again = api.post(&both.to_string());
    assert_eq!(
        again["body"], first["body"],
        "a retry gets the first answer"
    );

    // A header and a field that disagree are refused, naming both keys:
    // were one to win, a retry under the other would queue again.
    let disagree = api.post_as(
        &api.token,
        &both.to_string(),
        json!({"Idempotency-Key": "hk3"}),
    );
    assert_eq!(disagree["status"], 400, "{disagree}");
    assert_eq!(disagree["body"]["error"]["field"], "Idempotency-Key");
    let message = disagree["body"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("\"hk3\"") && message.contains("\"k1\""),
        "{message}"
    );
    // Two headers are refused: which key was meant cannot be known.
    let two = json!([["Idempotency-Key", "d1"], ["Idempotency-Key", "d2"]]);
    let twice = api.post_as(&api.token, &plain.to_string(), two);
    assert_eq!(twice["status"], 400, "{twice}");
    assert_eq!(twice["body"]["error"]["field"], "Idempotency-Key");
    let message = twice["body"]["error"]["message"].as_str().unwrap();
    assert!(message.contains("more than once"), "{message}");
    // A space in the header's key is not the visible ASCII it must be.
    let spaced = api.post_as(
        &api.token,
        &plain.to_string(),
        json!({"Idempotency-Key": "a b"}),
    );
    assert_eq!(spaced["status"], 400, "{spaced}");
    assert_eq!(spaced["body"]["error"]["field"], "Idempotency-Key");

    // The refusals took no key: hk3 and d1 are still new.
    for key in ["hk3", "d1"] {
        let r = api.post_as(
            &api.token,
            &plain.to_string(),
            json!({"Idempotency-Key": key}),
        );
        assert_eq!(r["body"]["success_count"], 1, "{key}: {r}");
    }
    api.delivered(3);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        api.sink.as_ref().unwrap().messages().len(),
        3,
        "only the accepted requests queued"
    );
}

#[test]
fn kill_9_mid_request_then_the_same_key_queues_only_the_rest() {
    let Some(mut api) = Api::start("", "", true) else {
        return;
    };
    let n = 3000;
    let body = json!({"envelope_sender": "a@example.com", "content": "Subject: s\n\nhi {{ i }}\n",
                      "recipients": recipients(n), "sendengine": {"idempotency_key": "batch-7"}})
    .to_string();
    let answered = api.post_and_kill_mid_request(&body);
    assert_ne!(
        answered["status"], 200,
        "the kill came before the answer: {answered}"
    );
    // Nothing was delivered before the kill (no sink): a copy now would
    // be a message queued twice.
    api.sink = Some(sink_on(api.sink_port, &api.store));
    api.daemon.restart();
    let retry = api.post(&body);
    assert_eq!(retry["status"], 200, "{retry}");
    assert_eq!(retry["body"]["success_count"], n);
    let delivered = api.delivered(n);
    std::thread::sleep(Duration::from_millis(1500));
    let all = api.sink.as_ref().unwrap().messages();
    let mut rcpts: Vec<String> = all
        .iter()
        .map(|m| m["rcpts"][0].as_str().unwrap().to_owned())
        .collect();
    rcpts.sort();
    rcpts.dedup();
    assert_eq!(rcpts.len(), n, "every recipient arrived");
    assert_eq!(
        all.len(),
        n,
        "and none twice ({} messages)",
        delivered.len()
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_every_answer_matches_the_document() {
    let Some(api) = Api::start("max_recipients = 20", "", false) else {
        return;
    };
    let Some(python) = support::venv_python() else {
        return;
    };
    let schemathesis = python.with_file_name("schemathesis");
    // Its cache folder goes to a temporary directory, not the checkout.
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new(&schemathesis)
        .current_dir(cwd.path())
        .args([
            "run",
            &format!("{}/api/openapi.json", api.url),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance",
            "--header",
            &format!("Authorization: Bearer {}", api.token),
            "--max-examples",
            "20",
            "--phases",
            "examples,coverage,fuzzing",
            "--seed",
            "19",
            "--generation-database",
            "none",
            "--max-time",
            "25",
        ])
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
}

#[test]
fn https_with_the_smtp_in_certificate_settings() {
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (c, k) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    let tls = format!("tls_cert = {c:?}\ntls_key = {k:?}");
    let Some(mut api) = Api::start(&tls, "", false) else {
        return;
    };
    let r = api.post(KUMO_CURL_EXAMPLE);
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["body"]["success_count"], 1);
    // Plain HTTP to the HTTPS port gets no answer.
    api.url = api.url.replacen("https", "http", 1);
    assert_eq!(api.post(KUMO_CURL_EXAMPLE)["status"], 0);
}
