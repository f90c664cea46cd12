//! Link and open tracking through the real daemon: an HTML message
//! (quoted-printable, multipart/alternative) to a delivery server with
//! tracking domains arrives at the sink with its links and pixel on those
//! domains, DKIM-signed after the rewrite (dkimpy verifies it); every link
//! leads back to its original through the tracking listener (Python's
//! http.client, which follows no redirect), a forged token is a 404, and
//! a click and an open become `click` / `open` events. The same message
//! from a group with tracking off arrives untouched.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use sendengine_dkim::{DkimKey, DnsRecord, KeyAlgorithm};
use support::{Daemon, DaemonConfig, Sink};

const LONG: Duration = Duration::from_secs(60);
const USER_AGENT: &str = "TrackingTest/1.0 (integration)";

/// The HTML both messages carry; sent quoted-printable.
const HTML: &str = "<html><BODY><p>Hello Bob, a line long enough to need quoted-printable soft breaks in the part.</p>\
<p><a href=\"https://shop.example.com/item?id=1&amp;ref=mail\">Item</a> \
<A CLASS=x HREF='http://example.org/a%20b?q=caf%C3%A9'>B</A> \
<a href=\"https://shop.example.com/item?id=1&amp;ref=mail\">Item again</a> \
<a href=\"mailto:help@example.com\">mail us</a> \
<a href=\"https://example.com/lu/1\">leave</a> \
<a href=\"https://example.com/prefs\">Unsubscribe</a></p></BODY></html>";

/// Sends the tracked message (relay network: tenant `app`) and the
/// untracked one (AUTH as `quiet`, whose group has tracking off).
const SEND: &str = r#"
import smtplib, sys, quopri
host, port, html = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def message(subject):
    qp = quopri.encodestring(html.encode()).decode().replace("\n", "\r\n")
    return ("From: News <app@example.com>\r\nTo: bob@example.net\r\nSubject: %s\r\n"
            "X-Campaign-Id: spring\r\nList-Unsubscribe: <mailto:u@example.com>, <https://example.com/lu/1>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
            "--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee https://shop.example.com/item?id=1\r\n"
            "--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            "%s\r\n--alt--\r\n" % (subject, qp))
with smtplib.SMTP(host, port, timeout=30) as s:
    s.sendmail("app@example.com", ["bob@example.net"], message("tracked"))
with smtplib.SMTP(host, port, timeout=30) as s:
    s.login("quiet", "pw")
    s.sendmail("app@example.com", ["bob@example.net"], message("untracked"))
print("sent")
"#;

/// Verifies both messages with dkimpy, checks the rewrite and talks to
/// the listener; prints `ok` and what it did, or fails with why.
const CHECK: &str = r#"
import email, http.client, json, re, sys, urllib.parse
import dkim
records_file, tracked_path, untracked_path, port, html, agent = sys.argv[1:7]
records = dict(line.split(" ", 1) for line in open(records_file).read().splitlines())
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip("."), "").encode()
def fail(why):
    print("FAIL", why); sys.exit(1)
raw = {}
for name, path in (("tracked", tracked_path), ("untracked", untracked_path)):
    data = open(path, "rb").read()
    if not dkim.verify(data, dnsfunc=dnsfunc):
        fail("dkimpy does not verify the %s message" % name)
    if any(len(line) > 998 for line in data.split(b"\r\n")):
        fail("a line of the %s message is over 998 octets" % name)
    raw[name] = email.message_from_bytes(data)
def parts(msg):
    plain = html_part = None
    for part in msg.walk():
        if part.get_content_type() == "text/plain": plain = part
        if part.get_content_type() == "text/html": html_part = part
    return plain, html_part
plain, tracked_html = parts(raw["tracked"])
if plain.get_payload(decode=True).rstrip(b"\r\n") != b"See https://shop.example.com/item?id=1":
    fail("the plain part changed: %r" % plain.get_payload(decode=True))
if tracked_html["Content-Transfer-Encoding"] != "quoted-printable":
    fail("the HTML part is no longer quoted-printable")
for line in tracked_html.get_payload().split("\n"):
    if len(line.rstrip("\r")) > 76: fail("QP line over 76: %r" % line)
body = tracked_html.get_payload(decode=True).decode()
hrefs = re.findall(r"""href=["']([^"']*)["']""", body, re.I)
clicks = [h for h in hrefs if h.startswith("http://click.example.com/c/")]
left = [h for h in hrefs if h not in clicks]
if left != ["mailto:help@example.com", "https://example.com/lu/1", "https://example.com/prefs"]:
    fail("untracked links: %r" % left)
if len(clicks) != 3 or clicks[0] != clicks[2] or clicks[0] == clicks[1]:
    fail("tracked links: %r" % clicks)
pixels = re.findall(r'<img src="(http://open\.example\.com/o/[A-Za-z0-9_-]+\.gif)"', body)
if len(pixels) != 1 or body.find(pixels[0]) > body.lower().rfind("</body>"):
    fail("pixel: %r in %r" % (pixels, body))
_, untracked_html = parts(raw["untracked"])
if untracked_html.get_payload(decode=True).decode().rstrip("\r\n") != html:
    fail("the untracked message changed: %r" % untracked_html.get_payload(decode=True))

def get(url, method="GET"):
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
    # As a browser would after DNS: the tracking domain points here.
    conn.request(method, parsed.path, headers={"Host": parsed.netloc, "User-Agent": agent})
    r = conn.getresponse()
    answer = (r.status, r.msg, r.read())
    conn.close()
    return answer
expected = {clicks[0]: "https://shop.example.com/item?id=1&ref=mail",
            clicks[1]: "http://example.org/a%20b?q=caf%C3%A9"}
status, headers, _ = get(clicks[1], "HEAD")
if status != 302: fail("HEAD of a link: %s" % status)
for url, original in expected.items():
    status, headers, _ = get(url)
    if status != 302 or headers.get("Location") != original:
        fail("%s: %s %r, expected a 302 to %s" % (url, status, headers, original))
status, headers, gif = get(pixels[0])
if status != 200 or headers.get("Content-Type") != "image/gif" or headers.get("Cache-Control") != "no-store" or not gif.startswith(b"GIF89a"):
    fail("pixel answer: %s %r %r" % (status, headers, gif[:10]))
token = clicks[0].rsplit("/", 1)[1]
forged = token[:-1] + ("A" if token[-1] != "A" else "B")
for path in ("/c/" + forged, "/c/" + token + "x", "/o/" + token + ".gif", "/c/", "/elsewhere", "/c/" + "A" * 5000):
    status, headers, answer = get("http://click.example.com" + path)
    if status != 404 or "error" not in json.loads(answer):
        fail("%s: %s %r" % (path[:60], status, answer))
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
conn.request("POST", "/c/" + token, body="x")
if conn.getresponse().status != 405: fail("POST was answered")
print("ok", json.dumps(expected))
"#;

fn records(dir: &Path, key: &DkimKey) {
    let record = DnsRecord::new("example.com", "s1", key).unwrap();
    std::fs::write(
        dir.join("records"),
        format!("{} {}", record.name, record.value),
    )
    .unwrap();
}

#[test]
fn links_and_opens_are_tracked_verified_and_recorded() {
    let Some(python) = support::venv_python() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let key = DkimKey::generate(KeyAlgorithm::Rsa).unwrap();
    std::fs::write(work.path().join("rsa.pem"), key.to_pem()).unwrap();
    records(work.path(), &key);
    let store = work.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let sink = Sink::start(&["--store-dir", store.to_str().unwrap()]);
    let tracking_port = support::free_port();
    let groups = |name: &str, extra: &str| {
        format!(
            "[[user_group]]\nname = \"{name}\"\nmarketing = [\"relay\"]\ntransactional = [\"relay\"]\nautoresponder = [\"relay\"]\n{extra}"
        )
    };
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\ndefault_user = \"app\"\n\
         [secrets]\nkey_file = \"{dir}/secret.key\"\n\
         [tracking]\nlisten = \"127.0.0.1:{tracking_port}\"\n\
         [[delivery_server]]\nname = \"relay\"\nhost = \"127.0.0.1\"\nport = {sink}\n\
         link_tracking_domain = \"click.example.com\"\nopen_tracking_domain = \"open.example.com\"\n\
         {tracked}{untracked}\
         [[user]]\nname = \"app\"\ngroup = \"tracked\"\n\
         [[user]]\nname = \"quiet\"\ngroup = \"untracked\"\npassword = \"pw\"\n\
         [[dkim_key]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key_file = \"{dir}/rsa.pem\"\n",
        dir = work.path().display(),
        sink = sink.addr.port(),
        tracked = groups("tracked", ""),
        untracked = groups(
            "untracked",
            "link_tracking = false\nopen_tracking = false\n"
        ),
    );
    let daemon = Daemon::start(DaemonConfig::custom(&config));

    let sent = Command::new(&python)
        .args(["-c", SEND, &daemon.addr.ip().to_string()])
        .arg(daemon.addr.port().to_string())
        .arg(HTML)
        .output()
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let got = sink.wait_messages(2, LONG);
    let path_of = |subject: &str| {
        got.iter()
            .map(|m| store.join(format!("{}.eml", m["seq"])))
            .find(|p| {
                std::fs::read_to_string(p)
                    .unwrap()
                    .contains(&format!("Subject: {subject}\r\n"))
            })
            .unwrap_or_else(|| panic!("no {subject} message at the sink"))
    };
    let (tracked, untracked) = (path_of("tracked"), path_of("untracked"));

    let checked = Command::new(&python)
        .args(["-c", CHECK])
        .arg(work.path().join("records"))
        .args([&tracked, &untracked])
        .arg(tracking_port.to_string())
        .args([HTML, USER_AGENT])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success() && report.starts_with("ok"),
        "{report}{}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // Two GETs of links (the HEAD records nothing) and one of the pixel.
    let clicks = daemon.wait_events("click", 2, LONG);
    let opens = daemon.wait_events("open", 1, LONG);
    let receptions = daemon.events_of("reception");
    let reception = receptions
        .iter()
        .find(|e| e["tenant"] == "app")
        .expect("the tracked message's reception");
    let mut urls: Vec<&str> = clicks.iter().map(|c| c["url"].as_str().unwrap()).collect();
    urls.sort();
    assert_eq!(
        urls,
        [
            "http://example.org/a%20b?q=caf%C3%A9",
            "https://shop.example.com/item?id=1&ref=mail"
        ]
    );
    for event in clicks.iter().chain(&opens) {
        assert_eq!(event["tenant"], "app", "{event}");
        assert_eq!(event["campaign"], "spring", "{event}");
        assert_eq!(event["recipient"], "bob@example.net", "{event}");
        assert_eq!(event["user_agent"], USER_AGENT, "{event}");
        assert_eq!(event["remote_host"], "127.0.0.1", "{event}");
        assert_eq!(event["message_id"], reception["message_id"], "{event}");
        assert_eq!(event["header_message_id"], reception["header_message_id"]);
    }
    assert_eq!(opens[0]["url"], serde_json::Value::Null);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(daemon.events_of("click").len(), 2, "the HEAD was recorded");
}

/// Holds `n` connections, each with a request head that never ends, and
/// prints how many the listener closed within 20 s and how long it took;
/// then makes one whole request and prints its status.
const SLOW_CLIENTS: &str = r#"
import http.client, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
started = time.time()
held = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /c/abc HTTP/1.1\r\nHost: click.example.com\r\n")
    held.append(s)
closed = 0
for s in held:
    s.settimeout(max(0.01, started + 20 - time.time()))
    try:
        while s.recv(4096):
            pass
        closed += 1
    except socket.timeout:
        pass
    except OSError:
        closed += 1
print("closed", closed, "after", round(time.time() - started, 1))
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
conn.request("GET", "/c/abc")
print("status", conn.getresponse().status)
"#;

/// Slow clients hold a connection slot for `header_timeout`, not forever,
/// and while they hold all of them the listener still ends up answering.
#[test]
fn slow_clients_are_cut_off_and_the_connection_bound_holds() {
    let tracking_port = support::free_port();
    let config = format!(
        "[smtp_in]\nlisten = [\"127.0.0.1:0\"]\nrelay_networks = [\"127.0.0.0/8\"]\n\
         [tracking]\nlisten = \"127.0.0.1:{tracking_port}\"\nmax_connections = 3\nheader_timeout = \"1s\"\n\
         [[delivery_server]]\nname = \"relay\"\nhost = \"127.0.0.1\"\nport = 9\n"
    );
    let _daemon = Daemon::start(DaemonConfig::custom(&config));
    let out = support::python(SLOW_CLIENTS, &[tracking_port.to_string(), "9".into()])
        .expect("python3 runs the slow clients");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nine clients, three at a time, one second each: about three seconds.
    assert!(report.contains("closed 9 after"), "{report}");
    assert!(report.contains("status 404"), "{report}");
}
