//! The injection server against abuse: no open relay, AUTH guessing,
//! floods of connections, recipients and bytes. Each test talks raw TCP to
//! the real daemon and, where memory is the point, reads the daemon's
//! `VmHWM` (peak resident memory) from /proc before and after the abuse.
//!
//! The big DATA stream is 200 MB by default and 1 GB with
//! `SENDENGINE_HOSTILE_DATA_MB=1024` (a local run; CI keeps the default).

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use support::{Daemon, DaemonConfig, Sink};

const USER: &str = "[[user]]\nname = \"app\"\npassword = \"s3cret\"\n";
/// AUTH PLAIN of \0app\0s3cret and of \0app\0wrong.
const GOOD_PLAIN: &str = "AUTH PLAIN AGFwcABzM2NyZXQ=";
const BAD_PLAIN: &str = "AUTH PLAIN AGFwcAB3cm9uZw==";

struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::greeted(TcpStream::connect(addr).expect("connect"))
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2).
    fn connect_from(local: IpAddr, addr: SocketAddr) -> Client {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let stream = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(local, 0)).unwrap();
            socket.connect(addr).await.unwrap().into_std().unwrap()
        });
        stream.set_nonblocking(false).unwrap();
        Client::greeted(stream)
    }

    fn greeted(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut c = Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = c.reply();
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }

    /// Reads one (possibly multi-line) reply; returns all its lines.
    fn reply_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line.trim_end().to_owned());
            if last {
                return lines;
            }
        }
    }

    fn reply(&mut self) -> String {
        self.reply_lines().pop().unwrap_or_default()
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    fn cmd_lines(&mut self, line: &str) -> Vec<String> {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply_lines()
    }

    /// True once the server has closed the connection (EOF).
    fn closed(&mut self) -> bool {
        let mut rest = String::new();
        matches!(self.reader.read_line(&mut rest), Ok(0))
    }
}

fn assert_reply(reply: &str, code: &str, enhanced: &str) {
    let mut parts = reply.splitn(3, ' ');
    assert_eq!(parts.next(), Some(code), "{reply}");
    assert_eq!(parts.next(), Some(enhanced), "{reply}");
    let text = parts.next().unwrap_or("");
    assert!(text.len() > 10, "refusal without a sentence: {reply}");
}

/// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resets the daemon's VmHWM to its current RSS (writing 5 to clear_refs),
/// so the peak measured afterwards belongs to the abuse that follows.
fn reset_peak(pid: u32) -> u64 {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    vm_kib(pid, "VmHWM")
}

/// Asserts that the daemon's peak memory grew by less than `limit_mib`.
fn assert_peak_growth(pid: u32, before_kib: u64, limit_mib: u64, what: &str) {
    let peak = vm_kib(pid, "VmHWM");
    let growth_mib = peak.saturating_sub(before_kib) / 1024;
    eprintln!("{what}: peak {} MiB, growth {growth_mib} MiB", peak / 1024);
    assert!(
        growth_mib < limit_mib,
        "{what}: the daemon's peak memory grew by {growth_mib} MiB (limit {limit_mib} MiB)"
    );
}

fn daemon_with(sink: &Sink, smtp_in: &str, top: &str) -> Daemon {
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.extra_smtp_in = smtp_in.into();
    cfg.extra_top = top.into();
    Daemon::start(cfg)
}

// ---- no open relay -------------------------------------------------------------

#[test]
fn no_relay_from_outside_relay_networks_even_after_bad_auth() {
    let sink = Sink::start(&[]);
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.relay_networks = vec!["10.0.0.0/8".into()];
    cfg.extra_top = USER.into();
    cfg.extra_smtp_in = "max_errors = 50\n".into();
    let daemon = Daemon::start(cfg);

    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    assert_reply(&c.cmd("RCPT TO:<victim@example.net>"), "554", "5.7.1");
    assert_reply(&c.cmd("RCPT TO:<other@example.org>"), "554", "5.7.1");
    c.cmd("RSET");
    assert_reply(&c.cmd(BAD_PLAIN), "535", "5.7.8");
    // Unknown user, and a malformed PLAIN answer, do not authenticate either.
    assert_reply(&c.cmd("AUTH PLAIN AG5vYm9keQBzM2NyZXQ="), "535", "5.7.8");
    assert_reply(&c.cmd("AUTH PLAIN !!!"), "501", "5.5.2");
    c.cmd("MAIL FROM:<a@example.com>");
    assert_reply(&c.cmd("RCPT TO:<victim@example.net>"), "554", "5.7.1");
    assert_reply(&c.cmd("DATA"), "554", "5.5.1");
    assert!(daemon.events_of("reception").is_empty());
}

#[test]
fn null_sender_may_not_go_to_many_recipients() {
    let sink = Sink::start(&[]);
    let daemon = daemon_with(&sink, "max_errors = 50\n", "");
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<one@example.net>").starts_with("250"));
    for i in 0..5 {
        assert_reply(
            &c.cmd(&format!("RCPT TO:<r{i}@example.net>")),
            "550",
            "5.5.3",
        );
    }
    // A null sender from outside the relay networks is refused outright.
    let mut cfg = DaemonConfig::new(sink.addr.port());
    cfg.relay_networks = vec!["10.0.0.0/8".into()];
    let closed = Daemon::start(cfg);
    let mut c = Client::connect(closed.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<>");
    assert_reply(&c.cmd("RCPT TO:<one@example.net>"), "554", "5.7.1");
}

/// A local address that is not loopback (the host's own interface
/// address), found by asking the kernel which source it would use.
fn non_loopback_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// AUTH in clear text is only offered on loopback. The daemon listens on
/// the host's real interface address and the client connects to it, so
/// the server sees a non-loopback peer address: no knob, no pretending.
#[test]
fn auth_in_clear_text_is_refused_off_loopback() {
    let Some(ip) = non_loopback_address() else {
        support::missing_peer(
            "a non-loopback IPv4 address on this host",
            "the server must see a peer off loopback",
        );
        return;
    };
    let sink = Sink::start(&[]);
    let daemon = Daemon::start(DaemonConfig::custom(&format!(
        r#"{USER}
[smtp_in]
listen = ["{ip}:0"]
relay_networks = ["127.0.0.0/8"]
[[delivery_server]]
name = "sink"
host = "127.0.0.1"
port = {port}
encryption = "none"
"#,
        port = sink.addr.port()
    )));
    assert_eq!(daemon.addr.ip(), ip);
    let mut c = Client::connect(daemon.addr);
    let ehlo = c.cmd_lines("EHLO client.test");
    assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    assert_reply(&c.cmd(GOOD_PLAIN), "538", "5.7.11");
    c.cmd("MAIL FROM:<a@example.com>");
    assert_reply(&c.cmd("RCPT TO:<victim@example.net>"), "554", "5.7.1");

    // The same password over loopback works: the refusal was about the path.
    let loopback = Daemon::start({
        let mut cfg = DaemonConfig::new(sink.addr.port());
        cfg.extra_top = USER.into();
        cfg
    });
    let mut c = Client::connect(loopback.addr);
    c.cmd("EHLO client.test");
    assert!(c.cmd(GOOD_PLAIN).starts_with("235"));
}

#[test]
fn auth_failures_are_limited_per_client_address() {
    let sink = Sink::start(&[]);
    let daemon = daemon_with(&sink, "auth_failures_per_ip = 3\nmax_errors = 50\n", USER);
    let guesser: IpAddr = "127.0.0.1".parse().unwrap();
    let mut c = Client::connect_from(guesser, daemon.addr);
    c.cmd("EHLO client.test");
    assert_reply(&c.cmd(BAD_PLAIN), "535", "5.7.8");
    assert_reply(&c.cmd(BAD_PLAIN), "535", "5.7.8");
    // The third failure is answered, then the session is closed.
    c.send(format!("{BAD_PLAIN}\r\n").as_bytes());
    assert_reply(&c.reply(), "535", "5.7.8");
    assert_reply(&c.reply(), "421", "4.7.0");
    assert!(c.closed());

    // A new connection from the same address: even the right password is
    // refused until the window ends.
    let mut c = Client::connect_from(guesser, daemon.addr);
    c.cmd("EHLO client.test");
    assert_reply(&c.cmd(GOOD_PLAIN), "421", "4.7.0");
    assert!(c.closed());

    // Another address is not affected.
    let mut other = Client::connect_from("127.0.0.2".parse().unwrap(), daemon.addr);
    other.cmd("EHLO client.test");
    assert!(other.cmd(GOOD_PLAIN).starts_with("235 2.7.0"));
}

// ---- resource limits -------------------------------------------------------------

/// Makes sure this process may open `needed` files (the daemon inherits
/// the limit); false if even the hard limit is lower.
fn ensure_open_files(needed: u64) -> bool {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let (soft, hard) = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| {
            let mut nums = l.split_whitespace().filter_map(|w| {
                w.parse::<u64>()
                    .ok()
                    .or((w == "unlimited").then_some(u64::MAX))
            });
            Some((nums.next()?, nums.next()?))
        })
        .unwrap_or((0, 0));
    if soft >= needed {
        return true;
    }
    // As root the hard limit itself can be raised (CAP_SYS_RESOURCE).
    let hard = hard.max(needed);
    let pid = std::process::id().to_string();
    let hard_text = if hard == u64::MAX {
        "unlimited".to_owned()
    } else {
        hard.to_string()
    };
    std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard_text}:{hard_text}")])
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn ten_thousand_idle_connections() {
    const CLIENTS: usize = 10_000;
    const MAX_CONNECTIONS: usize = 1_000;
    if !ensure_open_files(CLIENTS as u64 + 2_000) {
        support::missing_peer(
            &format!("RLIMIT_NOFILE of {CLIENTS} + 2000"),
            "run as root, or raise the hard limit (ulimit -Hn)",
        );
        return;
    }
    let sink = Sink::start(&[]);
    let daemon = daemon_with(&sink, &format!("max_connections = {MAX_CONNECTIONS}\n"), "");
    let before = reset_peak(daemon.pid());

    let mut streams = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let s = TcpStream::connect(daemon.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        streams.push(s);
    }
    let (mut greeted, mut refused) = (0, 0);
    for s in &streams {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("first line");
        if line.starts_with("220 ") {
            greeted += 1;
        } else {
            assert_reply(line.trim_end(), "421", "4.3.2");
            refused += 1;
        }
    }
    assert_eq!(
        (greeted, refused),
        (MAX_CONNECTIONS, CLIENTS - MAX_CONNECTIONS)
    );
    // 1,000 idle sessions hold a 16 KiB read buffer each, plus the task
    // (about 21 MiB measured).
    assert_peak_growth(daemon.pid(), before, 64, "10,000 idle connections");

    drop(streams);
    let mut c = support::wait_for(Duration::from_secs(60), "a free slot", || {
        let s = TcpStream::connect(daemon.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let mut reader = BufReader::new(s.try_clone().ok()?);
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        line.starts_with("220 ")
            .then_some(Client { reader, writer: s })
    });
    assert!(c.cmd("NOOP").starts_with("250"));
}

#[test]
fn a_client_sending_one_byte_a_second_is_closed() {
    let sink = Sink::start(&[]);
    let daemon = daemon_with(
        &sink,
        "command_timeout = \"2s\"\ndata_timeout = \"3s\"\n",
        "",
    );
    // In a command line: the timeout covers the whole line, so trickling
    // does not extend it.
    let mut c = Client::connect(daemon.addr);
    let reply = trickle(&mut c, b"EHLO slow.client.example.com\r\n");
    assert_reply(&reply, "421", "4.4.2");
    assert!(c.closed());

    // In DATA: the same with data_timeout.
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    let reply = trickle(&mut c, b"Subject: slow\r\n\r\nbody body body body\r\n.\r\n");
    assert_reply(&reply, "421", "4.4.2");
    assert!(c.closed());
    assert!(daemon.events_of("reception").is_empty());
}

/// Sends `bytes` one a second until the server says something.
fn trickle(c: &mut Client, bytes: &[u8]) -> String {
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    for b in bytes {
        if c.writer.write_all(&[*b]).is_err() {
            break;
        }
        let mut line = String::new();
        match c.reader.read_line(&mut line) {
            Ok(n) if n > 0 => return line.trim_end().to_owned(),
            Ok(_) => panic!("closed without a reply"),
            Err(_) => {} // no reply within the second: keep trickling
        }
    }
    panic!("the server waited for the whole trickle");
}

#[test]
fn a_huge_data_stream_is_read_and_discarded() {
    let megabytes: usize = std::env::var("SENDENGINE_HOSTILE_DATA_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let sink = Sink::start(&[]);
    let daemon = daemon_with(&sink, "", ""); // max_message_size = 1MB
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    let before = reset_peak(daemon.pid());

    // First half in 1,000-byte lines, second half one endless line: the
    // reader must not buffer either. Streamed from a fixed 1 MiB block.
    let mut lines = Vec::with_capacity(1 << 20);
    while lines.len() + 1000 <= 1 << 20 {
        lines.extend_from_slice(&[b'x'; 998]);
        lines.extend_from_slice(b"\r\n");
    }
    let endless = vec![b'y'; 1 << 20];
    for i in 0..megabytes {
        let block = if i < megabytes / 2 { &lines } else { &endless };
        c.send(block);
    }
    c.send(b"\r\n.\r\n");
    assert_reply(&c.reply(), "552", "5.3.4");
    assert_peak_growth(
        daemon.pid(),
        before,
        48,
        &format!("a {megabytes} MB DATA stream"),
    );
    // The session goes on.
    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<a@example.com>").starts_with("250"));
    assert!(daemon.events_of("reception").is_empty());
}

#[test]
fn a_hundred_thousand_recipients() {
    const RCPTS: usize = 100_000;
    let sink = Sink::start(&[]);
    let daemon = daemon_with(&sink, "max_recipients = 1000\n", "");
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@example.com>");
    let before = reset_peak(daemon.pid());

    // Pipelined from another thread, so neither side's buffers fill.
    let mut writer = c.writer.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut batch = Vec::new();
        for i in 0..RCPTS {
            batch.extend_from_slice(format!("RCPT TO:<r{i}@example.net>\r\n").as_bytes());
            if batch.len() > 64 * 1024 {
                writer.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        writer.write_all(&batch).unwrap();
    });
    let (mut accepted, mut limited) = (0, 0);
    for _ in 0..RCPTS {
        let reply = c.reply();
        if reply.starts_with("250 ") {
            accepted += 1;
        } else {
            assert_reply(&reply, "452", "4.5.3");
            limited += 1;
        }
    }
    sender.join().unwrap();
    assert_eq!((accepted, limited), (1000, RCPTS - 1000));
    assert_peak_growth(daemon.pid(), before, 48, "100,000 RCPTs");
    // 452 is not an error: the session is still open and sane.
    assert!(c.cmd("RSET").starts_with("250"));
    assert!(c.cmd("NOOP").starts_with("250"));
}

#[test]
fn header_bombs_are_refused() {
    let sink = Sink::start(&[]);
    // A message limit well above the bombs, so the header limits answer.
    let daemon = Daemon::start(DaemonConfig::custom(&format!(
        r#"[smtp_in]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.0/8"]
max_message_size = "50MB"
[[delivery_server]]
name = "sink"
host = "127.0.0.1"
port = {port}
encryption = "none"
"#,
        port = sink.addr.port()
    )));
    let mut c = Client::connect(daemon.addr);
    c.cmd("EHLO client.test");
    let before = reset_peak(daemon.pid());

    // 100,000 header lines.
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    let mut bomb = Vec::new();
    for i in 0..100_000 {
        bomb.extend_from_slice(format!("X-Bomb-{i}: v\r\n").as_bytes());
    }
    bomb.extend_from_slice(b"\r\nbody\r\n.\r\n");
    c.send(&bomb);
    let reply = c.reply();
    assert_reply(&reply, "552", "5.3.4");
    assert!(reply.contains("Header section too big"), "{reply}");

    // One 10 MB header line.
    c.cmd("MAIL FROM:<a@example.com>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: ");
    let chunk = vec![b'a'; 1 << 20];
    for _ in 0..10 {
        c.send(&chunk);
    }
    c.send(b"\r\n\r\nbody\r\n.\r\n");
    let reply = c.reply();
    assert_reply(&reply, "552", "5.3.4");
    assert!(reply.contains("Header section too big"), "{reply}");
    assert_peak_growth(daemon.pid(), before, 48, "header bombs");

    assert!(c.cmd("NOOP").starts_with("250"));
    assert!(daemon.events_of("reception").is_empty());
}

// ---- hostile clients in Python (issue 15) -----------------------------------------

/// Runs a hostile client written in Python; returns its stdout lines.
fn hostile_python(script: &str, args: &[String]) -> Vec<String> {
    let out =
        support::python(script, args).expect("python3 is required (scripts/install-test-deps.sh)");
    assert!(
        out.status.success(),
        "python client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn addr_args(addr: SocketAddr, more: &[&str]) -> Vec<String> {
    let mut args = vec![addr.ip().to_string(), addr.port().to_string()];
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// Clients that pipeline commands and never read the replies, on both
/// listeners: each is closed once a write has stalled for command_timeout,
/// so the slots come back (before: held forever).
#[test]
fn clients_that_never_read_replies_lose_their_slot() {
    const STALLER: &str = r#"
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, port))
    s.settimeout(2)
    try:
        while True:
            s.send(b"NOOP\r\n" * 4096)
    except (socket.timeout, OSError):
        pass  # the server stopped reading: its writes are stalled
    socks.append(s)
# Wait for a free slot while holding every stalled connection open.
deadline = time.time() + 60
while time.time() < deadline:
    c = socket.create_connection((host, port), timeout=10)
    greeting = c.recv(512).decode()
    c.close()
    if greeting.startswith("220 "):
        print("free after %.1f s" % (60 - (deadline - time.time())))
        break
    time.sleep(0.5)
else:
    print("still busy")
"#;
    let sink = Sink::start(&[]);
    let bounce_port = support::free_port();
    let limits = "max_connections = 2\ncommand_timeout = \"2s\"\nmax_idle_commands = 100000000\n";
    let daemon = daemon_with(
        &sink,
        limits,
        &format!("[bounce_in]\nlisten = [\"127.0.0.1:{bounce_port}\"]\n{limits}"),
    );
    let lines = hostile_python(STALLER, &addr_args(daemon.addr, &["2"]));
    assert!(lines[0].starts_with("free after"), "injection: {lines:?}");
    let bounce: SocketAddr = format!("127.0.0.1:{bounce_port}").parse().unwrap();
    let lines = hostile_python(STALLER, &addr_args(bounce, &["2"]));
    assert!(lines[0].starts_with("free after"), "bounce_in: {lines:?}");
}

/// One address cannot take every slot (max_connections_per_ip, 421 4.7.0),
/// and a session of NOOPs is closed at max_idle_commands (421 4.7.0), on
/// both listeners; another address still gets in.
#[test]
fn one_address_cannot_take_every_slot_or_idle_forever() {
    const CLIENT: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=20, source_address=("127.0.0.3", 0))
    held.append(s)
    print("conn%d %s" % (i, s.recv(512).decode().strip()))
s = held[0]
f = s.makefile("rb")
s.sendall(b"EHLO hostile.test\r\n")
while True:
    line = f.readline().decode()
    if line[3:4] == " ": break
for i in range(10):
    s.sendall(b"NOOP\r\n")
    reply = f.readline().decode().strip()
    if not reply.startswith("250"): break
print("noop %d %s" % (i, reply))
print("closed" if f.readline() == b"" else "open")
other = socket.create_connection((host, port), timeout=20, source_address=("127.0.0.4", 0))
print("other " + other.recv(512).decode().strip())
"#;
    let sink = Sink::start(&[]);
    let bounce_port = support::free_port();
    let limits = "max_connections_per_ip = 3\nmax_idle_commands = 5\n";
    let mut cfg = DaemonConfig::new(sink.addr.port());
    // Loopback is not a relay network here, so the per-address limit applies.
    cfg.relay_networks = vec!["10.0.0.0/8".into()];
    cfg.extra_smtp_in = limits.into();
    cfg.extra_top = format!("[bounce_in]\nlisten = [\"127.0.0.1:{bounce_port}\"]\n{limits}");
    let daemon = Daemon::start(cfg);
    let bounce: SocketAddr = format!("127.0.0.1:{bounce_port}").parse().unwrap();
    for addr in [daemon.addr, bounce] {
        let lines = hostile_python(CLIENT, &addr_args(addr, &["4"]));
        for line in &lines[..3] {
            assert!(line.contains(" 220 "), "{addr}: {lines:?}");
        }
        let refused = lines[3].strip_prefix("conn3 ").unwrap();
        assert_reply(refused, "421", "4.7.0");
        // EHLO and four NOOPs are the five allowed; the fifth NOOP is one too many.
        let noop = lines[4].strip_prefix("noop 4 ").unwrap();
        assert_reply(noop, "421", "4.7.0");
        assert_eq!(lines[5], "closed", "{addr}: {lines:?}");
        assert!(lines[6].starts_with("other 220 "), "{addr}: {lines:?}");
    }
}

/// 100 parallel AUTH guesses from one address with a limit of 5: at most
/// 5 are verified (535), the rest are refused (421), and the right password
/// is refused afterwards. Unknown and known users take about as long.
#[test]
fn parallel_auth_guesses_are_counted_where_they_are_verified() {
    const GUESSER: &str = r#"
import base64, socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
N = 100
barrier = threading.Barrier(N)
codes = []
lock = threading.Lock()
def guess(i):
    s = socket.create_connection((host, port), timeout=60)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO guesser.test\r\n")
    while f.readline().decode()[3:4] != " ": pass
    barrier.wait()
    s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0app\0guess%d" % i) + b"\r\n")
    reply = f.readline().decode()
    with lock: codes.append(reply[:3])
threads = [threading.Thread(target=guess, args=(i,)) for i in range(N)]
for t in threads: t.start()
for t in threads: t.join()
print("535=%d 421=%d" % (codes.count("535"), codes.count("421")))
s = socket.create_connection((host, port), timeout=60)
f = s.makefile("rb")
f.readline()
s.sendall(b"EHLO guesser.test\r\n")
while f.readline().decode()[3:4] != " ": pass
s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0app\0s3cret") + b"\r\n")
print("right " + f.readline().decode().strip())
"#;
    let sink = Sink::start(&[]);
    let daemon = daemon_with(&sink, "auth_failures_per_ip = 5\n", USER);
    let lines = hostile_python(GUESSER, &addr_args(daemon.addr, &[]));
    let (checked, refused) = lines[0]
        .split_once(' ')
        .map(|(a, b)| {
            let n = |t: &str| t.split('=').nth(1).unwrap().parse::<usize>().unwrap();
            (n(a), n(b))
        })
        .unwrap();
    assert!(checked <= 5, "{} guesses were verified (limit 5)", checked);
    assert_eq!(checked + refused, 100, "{lines:?}");
    assert_reply(lines[1].strip_prefix("right ").unwrap(), "421", "4.7.0");
}

/// A known user with a wrong password and an unknown user take about as
/// long (both verified against a PBKDF2 hash): the median times are within 3x.
#[test]
fn unknown_users_take_as_long_as_wrong_passwords() {
    const TIMER: &str = r#"
import base64, socket, statistics, sys, time
host, port = sys.argv[1], int(sys.argv[2])
def median(user):
    times = []
    for i in range(9):
        s = socket.create_connection((host, port), timeout=60)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO timer.test\r\n")
        while f.readline().decode()[3:4] != " ": pass
        start = time.perf_counter()
        s.sendall(b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0wrong%d" % i) + b"\r\n")
        reply = f.readline().decode()
        times.append(time.perf_counter() - start)
        assert reply.startswith("535"), reply
        s.close()
    return statistics.median(times)
print("%f %f" % (median(b"app"), median(b"nobody")))
"#;
    let sink = Sink::start(&[]);
    let daemon = daemon_with(&sink, "auth_failures_per_ip = 1000\n", USER);
    let lines = hostile_python(TIMER, &addr_args(daemon.addr, &[]));
    let times: Vec<f64> = lines[0].split(' ').map(|t| t.parse().unwrap()).collect();
    let (known, unknown) = (times[0], times[1]);
    eprintln!("median AUTH time: known user {known:.4} s, unknown user {unknown:.4} s");
    assert!(
        unknown * 3.0 >= known && known * 3.0 >= unknown,
        "known {known:.4} s vs unknown {unknown:.4} s"
    );
}

/// 40 concurrent 20 MB messages against a 64 MB DATA budget: the daemon's
/// peak memory stays under the budget plus a fixed margin (before: about
/// 1.2 GB), every client gets 250 or 451 4.3.1, and some get through. Half
/// the clients declare SIZE (reserved before 354), half do not (reserved
/// as the message arrives).
#[test]
fn data_in_flight_is_bounded_in_total() {
    const FLOOD: &str = r#"
import smtplib, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
body = ("Subject: big\r\n\r\n" + ("x" * 998 + "\r\n") * 20000)
results = []
lock = threading.Lock()
def send(i):
    try:
        with smtplib.SMTP(host, port, timeout=120) as s:
            s.ehlo("flood.test")
            if i % 2:
                s.esmtp_features.pop("size", None)
            s.sendmail("a@example.com", ["b@example.net"], body)
            r = "250"
    except smtplib.SMTPDataError as e:
        r = "%d %s" % (e.smtp_code, e.smtp_error.decode())
    except smtplib.SMTPResponseException as e:
        r = "%d %s" % (e.smtp_code, e.smtp_error.decode())
    with lock: results.append(r)
threads = [threading.Thread(target=send, args=(i,)) for i in range(40)]
for t in threads: t.start()
for t in threads: t.join()
for r in results: print(r)
"#;
    // Delivery goes nowhere (nothing listens), so only intake holds bytes.
    let daemon = Daemon::start(DaemonConfig::custom(&format!(
        r#"[smtp_in]
listen = ["127.0.0.1:0"]
relay_networks = ["127.0.0.0/8"]
max_message_size = "25MB"
max_data_in_flight = "64MB"
[[delivery_server]]
name = "nowhere"
host = "127.0.0.1"
port = {port}
encryption = "none"
"#,
        port = support::free_port()
    )));
    let before = reset_peak(daemon.pid());
    let results = hostile_python(FLOOD, &addr_args(daemon.addr, &[]));
    assert_eq!(results.len(), 40);
    let accepted = results.iter().filter(|r| *r == "250").count();
    for r in results.iter().filter(|r| *r != "250") {
        assert_reply(r, "451", "4.3.1");
    }
    assert!(accepted >= 2, "{results:?}");
    assert_peak_growth(
        daemon.pid(),
        before,
        64 + 224,
        "40 x 20 MB against a 64 MB budget",
    );
}
