//! The HTTP injection API's test client: a daemon with `[http_in]`, an
//! API key, a sink, and Python's `urllib` to post requests (`http_in.rs`,
//! `cluster_http.rs`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{Daemon, DaemonConfig, Sink, ctl_result, free_port, sendctl, wait_for};

/// POSTs a body file with urllib; prints `{"status", "headers", "body"}`.
/// The extra headers are an object, or a list of `[name, value]` pairs
/// to send a header more than once (urllib keeps one value per name, so
/// those go with http.client, over plain HTTP).
pub const CLIENT: &str = r#"
import http.client, json, ssl, sys, urllib.parse, urllib.request, urllib.error
url, token, path, extra = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
headers = {"Content-Type": "application/json", **({} if isinstance(extra, list) else extra)}
if token:
    headers["Authorization"] = "Bearer " + token
data = open(path, "rb").read() if path else None
if isinstance(extra, list):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    conn.putrequest("POST", parts.path)
    for name, value in [*headers.items(), *extra, ("Content-Length", str(len(data)))]:
        conn.putheader(name, value)
    conn.endheaders(data)
    r = conn.getresponse()
    body = r.read()
    print(json.dumps({"status": r.status, "headers": {k.lower(): v for k, v in r.getheaders()},
                      "body": json.loads(body) if body else None}))
    sys.exit(0)
request = urllib.request.Request(url, data=data, method="POST" if path else "GET", headers=headers)
try:
    # The tests' certificates are self-signed.
    r = urllib.request.urlopen(request, timeout=120, context=ssl._create_unverified_context())
    status, got, body = r.status, r.headers, r.read()
except urllib.error.HTTPError as e:
    status, got, body = e.code, e.headers, e.read()
except Exception as e:  # no HTTP answer at all (refused, reset, not HTTP)
    print(json.dumps({"status": 0, "headers": {}, "body": str(e)}))
    sys.exit(0)
print(json.dumps({"status": status, "headers": {k.lower(): v for k, v in got.items()},
                  "body": json.loads(body) if body else None}))
"#;

pub struct Api {
    pub daemon: Daemon,
    pub url: String,
    pub token: String,
    pub sink: Option<Sink>,
    pub sink_port: u16,
    pub store: PathBuf,
    pub _store_dir: tempfile::TempDir,
}

impl Api {
    /// A daemon with `[http_in]` (plus `http_extra` lines), the user
    /// `app` (plus `objects`) and an API key for it; the sink started
    /// unless `sink_down`.
    pub fn start(http_extra: &str, objects: &str, sink_down: bool) -> Option<Api> {
        Api::start_in("", http_extra, objects, free_port(), !sink_down)
    }

    /// `start` with `extra_top` at the top of the configuration (a fleet
    /// node's `[cluster]`), relaying to `sink_port`, where a sink with
    /// its own store is started when `own_sink`.
    pub fn start_in(
        extra_top: &str,
        http_extra: &str,
        objects: &str,
        sink_port: u16,
        own_sink: bool,
    ) -> Option<Api> {
        if super::python3_missing("the HTTP client of these tests") {
            return None;
        }
        let store_dir = tempfile::tempdir().unwrap();
        let store = store_dir.path().to_owned();
        let sink = own_sink.then(|| sink_on(sink_port, &store));
        let http_port = free_port();
        let mut config = DaemonConfig::new(sink_port);
        config.relay_networks.clear();
        config.extra_top = extra_top.to_owned();
        config.extra_server = format!(
            "[http_in]\nlisten = [\"127.0.0.1:{http_port}\"]\n{http_extra}\n[[user]]\nname = \"app\"\npassword = \"secret\"\n{objects}"
        );
        let daemon = Daemon::start(config);
        let scheme = if http_extra.contains("tls_cert") {
            "https"
        } else {
            "http"
        };
        let token = create_api_key(&daemon);
        Some(Api {
            daemon,
            url: format!("{scheme}://127.0.0.1:{http_port}"),
            token,
            sink,
            sink_port,
            store,
            _store_dir: store_dir,
        })
    }

    pub fn post(&self, body: &str) -> Value {
        self.post_as(&self.token, body, json!({}))
    }

    pub fn post_as(&self, token: &str, body: &str, headers: Value) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body.json");
        std::fs::write(&path, body).unwrap();
        let out = Command::new("python3")
            .args(["-c", CLIENT, &format!("{}/api/inject/v1", self.url), token])
            .arg(&path)
            .arg(headers.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Posts `body` and kills the daemon with SIGKILL once some of the
    /// request is on disk (10 receptions), long before all of it; returns
    /// what the client got (no answer: status 0).
    pub fn post_and_kill_mid_request(&mut self, body: &str) -> Value {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body.json");
        std::fs::write(&path, body).unwrap();
        let mut client = Command::new("python3")
            .args([
                "-c",
                CLIENT,
                &format!("{}/api/inject/v1", self.url),
                &self.token,
            ])
            .arg(&path)
            .arg("{}")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(Duration::from_secs(30), "receptions", || {
            if client.try_wait().unwrap().is_some() {
                let mut out = String::new();
                client
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                panic!("the request was answered before the kill: {out}");
            }
            (self.daemon.events_of("reception").len() >= 10).then_some(())
        });
        self.daemon.kill9();
        let answered = client.wait_with_output().unwrap();
        serde_json::from_slice(&answered.stdout).unwrap()
    }

    /// The messages the sink stored, once there are `n`.
    pub fn delivered(&self, n: usize) -> Vec<(Vec<String>, String)> {
        let sink = self.sink.as_ref().expect("the sink runs");
        let lines = sink.wait_messages(n, Duration::from_secs(30));
        lines
            .iter()
            .map(|l| {
                let rcpts = l["rcpts"].as_array().unwrap().iter();
                let rcpts = rcpts.map(|r| r.as_str().unwrap().to_owned()).collect();
                let eml = self.store.join(format!("{}.eml", l["seq"]));
                (rcpts, std::fs::read_to_string(eml).unwrap_or_default())
            })
            .collect()
    }
}

/// A new API key for `app`. A fleet node takes changes only once it has
/// read the fleet's configuration, a moment after its start.
fn create_api_key(daemon: &Daemon) -> String {
    let args = ["user", "api-key", "create", "app"];
    let out = wait_for(Duration::from_secs(30), "an API key for app", || {
        let out = sendctl(daemon, &[&["--json"], &args[..]].concat());
        let not_yet = String::from_utf8_lossy(&out.stderr).contains("cluster_unavailable");
        (!not_yet).then_some(out)
    });
    let key = ctl_result(&args, out);
    key["token"].as_str().expect("a token").to_owned()
}

pub fn sink_on(port: u16, store: &Path) -> Sink {
    Sink::start_on(port, &["--store-dir", store.to_str().unwrap()])
}

pub fn recipients(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"email": format!("r{i}@example.net"), "substitutions": {"i": i}}))
        .collect()
}
