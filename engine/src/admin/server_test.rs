//! `server.test`: one SMTP transaction with a delivery server, step by
//! step, reporting each step's reply and time and the first that failed.
//!
//! Steps: connect, (TLS handshake for implicit TLS), greeting, EHLO,
//! STARTTLS + TLS handshake + EHLO when configured, AUTH when configured,
//! MAIL FROM, RCPT TO, then DATA with a small test message when a `to`
//! address is given, or RSET when not (nothing is sent), and QUIT. The
//! delivery client hides these steps behind one `connect`/`send`, so this
//! is a small dialogue of its own built on the client's reply parser and
//! the shared `Stream`. The result is stored on the server (`last_test`).
//!
//! Two more targets: a definition not saved yet (`server`, what
//! `sendctl server test --file F.json` sends), and `direct`, the MX path:
//! the addresses of the MX hosts of the `to` address's domain in order of
//! preference, reached as direct delivery reaches them, the next one tried
//! while one cannot be connected to. Neither result is stored.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::protocol::{AdminError, Args};
use super::{AdminContext, blocking};
use crate::dns::{MxHost, MxLookup, Resolver};
use crate::smtp::client::{
    Credentials, Encryption, MAX_REPLY_LINE, MAX_REPLY_LINES, Reply, ReplyLine, tls_handshake,
};
use crate::smtp::stream::Stream;
use crate::tenancy::model::{ServerTest, ServerTestStep};
use crate::tenancy::{Change, DIRECT, DeliveryServer, DeliveryServerSpec, SECRET_PLACEHOLDER};
use crate::timefmt::{now_ms, rfc3339};
use crate::values::mailbox::is_mailbox;

pub async fn run(ctx: &Arc<AdminContext>, args: &Args<'_>) -> Result<Value, AdminError> {
    let to = args.opt_str("to")?.map(str::to_owned);
    let from = args
        .opt_str("from")?
        .map(str::to_owned)
        .unwrap_or_else(|| format!("postmaster@{}", ctx.engine.hostname));
    for (field, address) in [("to", to.as_deref()), ("from", Some(from.as_str()))] {
        if let Some(address) = address.filter(|a| !is_mailbox(a)) {
            return Err(AdminError::bad_args(format!(
                "{field}: `{address}` is not a mailbox: write local-part@domain"
            )));
        }
    }
    let plan = Plan {
        helo: ctx.engine.hostname.clone(),
        from,
        to,
    };
    let result = match (args.0.get("server"), args.opt_str("name")?) {
        (Some(_), Some(_)) => {
            return Err(AdminError::bad_args(
                "server: give either a server's name or a definition to test, not both",
            ));
        }
        (Some(definition), None) => test_definition(definition, &plan).await?,
        (None, Some(DIRECT)) => test_direct(ctx, &plan).await?,
        (None, Some(name)) => {
            let engine = ctx.engine.clone();
            let owned = name.to_owned();
            let seen = blocking(move || super::objects::stored_server(&engine, &owned)).await?;
            let result = test_stored(ctx, name, &plan).await?;
            if let Some(seen) = seen {
                let engine = ctx.engine.clone();
                let stored = result.clone();
                blocking(move || store_result(&engine, seen, stored)).await?;
            }
            result
        }
        (None, None) => {
            return Err(AdminError::bad_args(
                "name: missing; give a server's name, `direct`, or a definition (`server`)",
            ));
        }
    };
    serde_json::to_value(&result).map_err(|e| AdminError::internal(e.to_string()))
}

async fn test_stored(
    ctx: &Arc<AdminContext>,
    name: &str,
    plan: &Plan,
) -> Result<ServerTest, AdminError> {
    let server = ctx
        .engine
        .tenancy
        .snapshot()
        .server(name)
        .cloned()
        .ok_or_else(|| AdminError::not_found(format!("no server is called `{name}`")))?;
    Ok(test_server(&server, plan).await)
}

/// A definition not saved (yet): checked as `server.put` would, with its
/// password in clear; the result is not stored anywhere.
async fn test_definition(definition: &Value, plan: &Plan) -> Result<ServerTest, AdminError> {
    let spec: DeliveryServerSpec = serde_json::from_value(definition.clone())
        .map_err(|e| AdminError::bad_args(format!("server: {e}")))?;
    let password = spec.auth.as_ref().map(|a| a.password.clone());
    if password.as_deref() == Some(SECRET_PLACEHOLDER) {
        return Err(AdminError::bad_args(format!(
            "server: auth.password `{SECRET_PLACEHOLDER}` stands for a stored password; \
             give the password to test a definition"
        )));
    }
    let server = spec
        .validate(password)
        .map_err(|e| AdminError::new("invalid", format!("server `{}`: {e}", spec.name)))?;
    Ok(test_server(&server, plan).await)
}

/// The MX path (`[direct] port`, opportunistic STARTTLS): the addresses
/// of the MX hosts in order of preference, as delivery tries them, until
/// one could be connected to; what that one answered is the result.
async fn test_direct(ctx: &Arc<AdminContext>, plan: &Plan) -> Result<ServerTest, AdminError> {
    let Some(domain) = plan.to.as_deref().and_then(|to| to.rsplit_once('@')) else {
        return Err(AdminError::bad_args(
            "to: `server test direct` needs the address to test with (--to ADDR)",
        ));
    };
    let mut server = ctx.engine.router.direct_server(domain.1);
    let started = Instant::now();
    let lookup = |ok, reply: String| ServerTestStep {
        step: "MX lookup".into(),
        ok,
        reply,
        millis: started.elapsed().as_millis() as u64,
    };
    let hosts = match mx_hosts(&ctx.engine.resolver, domain.1).await {
        Ok(hosts) => hosts,
        Err(why) => return Ok(failed_lookup(vec![lookup(false, why)])),
    };
    let mut steps = Vec::new();
    let mut last: Option<ServerTest> = None;
    let mut tried = 0;
    // A host's addresses are looked up only when the hosts before it
    // could not be connected to, as delivery does.
    'hosts: for host in &hosts {
        let found = match mx_addresses(&ctx.engine.resolver, domain.1, host).await {
            Ok(found) => found,
            Err(why) => {
                steps.push(lookup(false, why));
                continue;
            }
        };
        for (address, note) in found {
            if tried == MAX_ADDRESSES_TRIED {
                break 'hosts;
            }
            tried += 1;
            steps.push(lookup(true, note));
            server.host = address;
            let mut result = test_server(&server, plan).await;
            steps.append(&mut result.steps);
            let reached = result.failed_step.as_deref() != Some("connect");
            last = Some(result);
            if reached {
                break 'hosts;
            }
        }
    }
    Ok(match last {
        Some(result) => ServerTest { steps, ..result },
        None => failed_lookup(steps),
    })
}

/// Delivery tries every address of every MX host; the test stops after
/// this many that could not be connected to, so that `sendctl` answers
/// within a few connect timeouts.
const MAX_ADDRESSES_TRIED: usize = 5;

fn failed_lookup(steps: Vec<ServerTestStep>) -> ServerTest {
    ServerTest {
        ok: false,
        time: rfc3339(now_ms()),
        failed_step: Some("MX lookup".into()),
        steps,
    }
}

/// The MX hosts of `domain`, most preferred first.
async fn mx_hosts(resolver: &Resolver, domain: &str) -> Result<Vec<MxHost>, String> {
    match resolver.mx(domain).await {
        Ok(MxLookup::Hosts(hosts)) if hosts.is_empty() => Err(format!("{domain} has no MX host")),
        Ok(MxLookup::Hosts(hosts)) => Ok(hosts),
        Ok(MxLookup::NullMx) => Err(format!("{domain} accepts no mail (null MX)")),
        Err(e) => Err(e.to_string()),
    }
}

/// The addresses of MX `host`, each with what was found, said for the
/// operator.
async fn mx_addresses(
    resolver: &Resolver,
    domain: &str,
    host: &MxHost,
) -> Result<Vec<(String, String)>, String> {
    let kind = if host.implicit {
        "no MX, the domain's own address".to_owned()
    } else {
        format!("MX {} {}", host.preference, host.exchange)
    };
    let addresses = resolver
        .addresses(&host.exchange)
        .await
        .map_err(|e| format!("{domain}: {kind}: {e}"))?;
    if addresses.is_empty() {
        return Err(format!("{domain}: {kind}: no address"));
    }
    Ok(addresses
        .iter()
        .map(|address| (address.to_string(), format!("{domain}: {kind} ({address})")))
        .collect())
}

/// Keeps the result on the stored server (its sealed password untouched)
/// if it is still the one tested; a server put again or deleted meanwhile
/// keeps no result (the operator saw it, and tests the new one).
fn store_result(
    engine: &crate::engine::Engine,
    seen: DeliveryServerSpec,
    result: ServerTest,
) -> Result<(), AdminError> {
    let name = seen.name.clone();
    match super::objects::apply(engine, Change::ServerTested { seen, result }) {
        Err(e) if e.code == "conflict" => {
            log::info!(
                "server `{name}` changed during `sendctl server test`: its result is not kept"
            );
            Ok(())
        }
        other => other,
    }
}

/// What to send.
pub struct Plan {
    pub helo: String,
    pub from: String,
    /// With an address the test sends a message; without, it stops at RSET.
    pub to: Option<String>,
}

/// Runs the dialogue; never fails as a whole, the result says what broke.
pub async fn test_server(server: &DeliveryServer, plan: &Plan) -> ServerTest {
    let mut run = Dialogue {
        steps: Vec::new(),
        timeout: server.timeout,
    };
    let outcome = run.transaction(server, plan).await;
    let failed_step = outcome
        .err()
        .and_then(|_| run.steps.iter().find(|s| !s.ok).map(|s| s.step.clone()));
    ServerTest {
        ok: failed_step.is_none(),
        time: rfc3339(now_ms()),
        failed_step,
        steps: run.steps,
    }
}

/// Marks that a step failed; the step itself is in `steps`.
struct Failed;

struct Dialogue {
    steps: Vec<ServerTestStep>,
    timeout: Duration,
}

/// The test message: small, plain, and saying what it is.
fn test_message(plan: &Plan, to: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: sendengine server test\r\n\
         Date: {date}\r\nMessage-ID: <test.{ms}@{helo}>\r\n\r\n\
         This is a test message sent by `sendctl server test`.\r\n",
        from = plan.from,
        date = crate::timefmt::rfc5322(now_ms()),
        ms = now_ms(),
        helo = plan.helo,
    )
}

impl Dialogue {
    async fn transaction(&mut self, server: &DeliveryServer, plan: &Plan) -> Result<(), Failed> {
        let mut conn = self.connect(server).await?;
        self.expect(&mut conn, "greeting", None, 220).await?;
        let mut ehlo = self.ehlo(&mut conn, plan).await?;
        if matches!(
            server.encryption,
            Encryption::StartTls | Encryption::StartTlsOpportunistic
        ) {
            let offered = ehlo.iter().any(|l| l.eq_ignore_ascii_case("STARTTLS"));
            if offered || server.encryption == Encryption::StartTls {
                self.expect(&mut conn, "STARTTLS", Some("STARTTLS"), 220)
                    .await?;
                conn = self.tls(conn, server).await?;
                ehlo = self.ehlo(&mut conn, plan).await?;
            }
        }
        if let Some(credentials) = &server.auth {
            self.auth(&mut conn, credentials, &ehlo).await?;
        }
        let mail = format!("MAIL FROM:<{}>", plan.from);
        self.expect(&mut conn, "MAIL FROM", Some(&mail), 250)
            .await?;
        let rcpt_to = plan
            .to
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", plan.helo));
        let rcpt = format!("RCPT TO:<{rcpt_to}>");
        self.expect(&mut conn, "RCPT TO", Some(&rcpt), 250).await?;
        if plan.to.is_some() {
            self.expect(&mut conn, "DATA", Some("DATA"), 354).await?;
            let body = format!("{}.", test_message(plan, &rcpt_to));
            self.expect(&mut conn, "end of data", Some(&body), 250)
                .await?;
        } else {
            self.expect(&mut conn, "RSET", Some("RSET"), 250).await?;
        }
        // A server that hangs up instead of answering QUIT has still done its job.
        let _ = self.expect(&mut conn, "QUIT", Some("QUIT"), 221).await;
        if let Some(quit) = self.steps.last_mut() {
            quit.ok = true;
        }
        Ok(())
    }

    fn record(&mut self, step: &str, ok: bool, reply: String, started: Instant) {
        self.steps.push(ServerTestStep {
            step: step.to_owned(),
            ok,
            reply,
            millis: started.elapsed().as_millis() as u64,
        });
    }

    async fn connect(&mut self, server: &DeliveryServer) -> Result<Conn, Failed> {
        let started = Instant::now();
        let addr = (server.host.as_str(), server.port);
        let tcp = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return self.fail("connect", e.to_string(), started),
            Err(_) => return self.fail("connect", self.timed_out(), started),
        };
        let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        self.record("connect", true, format!("connected to {peer}"), started);
        let conn = Conn::new(Stream::Plain(tcp));
        if server.encryption == Encryption::Tls {
            return self.tls(conn, server).await;
        }
        Ok(conn)
    }

    async fn tls(&mut self, conn: Conn, server: &DeliveryServer) -> Result<Conn, Failed> {
        let started = Instant::now();
        let Stream::Plain(tcp) = conn.stream else {
            return self.fail("TLS handshake", "already encrypted".into(), started);
        };
        // Opportunistic STARTTLS never verifies; the others follow tls_verify.
        let verify = server.tls_verify && server.encryption != Encryption::StartTlsOpportunistic;
        match tls_handshake(tcp, &server.host, verify, self.timeout).await {
            Ok(stream) => {
                let note = if verify {
                    "certificate verified"
                } else {
                    "certificate not checked (tls_verify = false or opportunistic)"
                };
                self.record("TLS handshake", true, note.into(), started);
                Ok(Conn::new(Stream::from(stream)))
            }
            Err(e) => self.fail("TLS handshake", e.to_string(), started),
        }
    }

    /// EHLO; returns the extension lines (first line dropped).
    async fn ehlo(&mut self, conn: &mut Conn, plan: &Plan) -> Result<Vec<String>, Failed> {
        let command = format!("EHLO {}", plan.helo);
        let lines = self.expect(conn, "EHLO", Some(&command), 250).await?;
        Ok(lines.into_iter().skip(1).collect())
    }

    /// AUTH PLAIN, or LOGIN when the server offers only that.
    async fn auth(
        &mut self,
        conn: &mut Conn,
        credentials: &Credentials,
        ehlo: &[String],
    ) -> Result<(), Failed> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mechanisms: Vec<String> = ehlo
            .iter()
            .filter_map(|l| {
                l.to_ascii_uppercase()
                    .strip_prefix("AUTH")
                    .map(str::to_owned)
            })
            .flat_map(|rest| {
                rest.split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let login_only =
            mechanisms.iter().any(|m| m == "LOGIN") && !mechanisms.iter().any(|m| m == "PLAIN");
        if !login_only {
            let token = b64(&format!(
                "\0{}\0{}",
                credentials.username, credentials.password
            ));
            self.expect(conn, "AUTH", Some(&format!("AUTH PLAIN {token}")), 235)
                .await?;
            return Ok(());
        }
        self.expect(conn, "AUTH", Some("AUTH LOGIN"), 334).await?;
        self.expect(conn, "AUTH", Some(&b64(&credentials.username)), 334)
            .await?;
        self.expect(conn, "AUTH", Some(&b64(&credentials.password)), 235)
            .await?;
        Ok(())
    }

    /// Sends `command` (if any), reads the reply, records the step; fails
    /// unless the reply code is `want`. Returns the reply's line texts.
    async fn expect(
        &mut self,
        conn: &mut Conn,
        step: &str,
        command: Option<&str>,
        want: u16,
    ) -> Result<Vec<String>, Failed> {
        let started = Instant::now();
        let exchange = async {
            if let Some(command) = command {
                conn.send_line(command).await.map_err(|e| e.to_string())?;
            }
            conn.read_reply().await
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok((reply, lines))) => {
                let ok = reply.code == want || (want == 250 && reply.code == 251);
                self.record(step, ok, reply.to_string(), started);
                if ok { Ok(lines) } else { Err(Failed) }
            }
            Ok(Err(message)) => self.fail(step, message, started),
            Err(_) => self.fail(step, self.timed_out(), started),
        }
    }

    fn fail<T>(&mut self, step: &str, why: String, started: Instant) -> Result<T, Failed> {
        self.record(step, false, why, started);
        Err(Failed)
    }

    fn timed_out(&self) -> String {
        format!("no answer within {:?}", self.timeout)
    }
}

/// The socket and what has been read from it but not used yet.
struct Conn {
    stream: Stream,
    buffer: Vec<u8>,
}

impl Conn {
    fn new(stream: Stream) -> Conn {
        Conn {
            stream,
            buffer: Vec::new(),
        }
    }

    async fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        self.stream.write_all(line.as_bytes()).await?;
        self.stream.write_all(b"\r\n").await?;
        self.stream.flush().await
    }

    /// One (possibly multi-line) reply and its line texts.
    async fn read_reply(&mut self) -> Result<(Reply, Vec<String>), String> {
        let mut raw = Vec::new();
        loop {
            let line = self.read_line().await?;
            let parsed = ReplyLine::parse(&line)?;
            let last = parsed.is_last;
            raw.push(line);
            if last {
                break;
            }
            if raw.len() >= MAX_REPLY_LINES {
                return Err(format!("reply longer than {MAX_REPLY_LINES} lines"));
            }
        }
        let parsed: Vec<ReplyLine<'_>> = raw
            .iter()
            .map(|l| ReplyLine::parse(l))
            .collect::<Result<_, _>>()?;
        let reply = Reply::from_lines(&parsed)?;
        let texts = parsed.iter().map(|l| l.text.to_owned()).collect();
        Ok((reply, texts))
    }

    async fn read_line(&mut self) -> Result<String, String> {
        loop {
            if let Some(end) = memchr::memchr(b'\n', &self.buffer) {
                let mut line: Vec<u8> = self.buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.buffer.len() > MAX_REPLY_LINE {
                return Err(format!("reply line longer than {MAX_REPLY_LINE} bytes"));
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .await
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }
}
