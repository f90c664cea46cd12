//! A small authoritative DNS server on loopback for tests: it answers A,
//! AAAA, MX (null MX too), TXT (several strings per record) and CNAME from
//! a zone the test gives, NXDOMAIN for unknown names, and SERVFAIL for
//! names marked so. UDP and TCP on the same port (UDP answers too large
//! for the client are truncated, as a real server does), threads only, so
//! it serves async tests and tests that run the daemon alike.
//!
//! ```ignore
//! let dns = DnsServer::start(vec![
//!     ("example.test", RecordData::mx(10, "mx.example.test")),
//!     ("mx.example.test", RecordData::A("127.0.0.1".parse().unwrap())),
//! ]);
//! // daemon config: [dns] + dns.nameservers_line()
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, SOA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

/// TTL of every answer: 0, so a test that changes the zone is seen at once.
const TTL: u32 = 0;
/// CNAME chains longer than this are answered as far as they got.
const MAX_CNAME_HOPS: usize = 8;
/// Plain DNS over UDP without EDNS (RFC 1035).
const CLASSIC_UDP_SIZE: usize = 512;

/// One record of the test zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// Preference and exchange host.
    Mx(u16, String),
    /// `MX 0 .` (RFC 7505).
    NullMx,
    /// One TXT record made of these strings (each at most 255 bytes).
    Txt(Vec<String>),
    Cname(String),
    /// Every query for this name gets SERVFAIL.
    ServFail,
}

impl RecordData {
    pub fn mx(preference: u16, exchange: &str) -> RecordData {
        RecordData::Mx(preference, exchange.to_owned())
    }

    pub fn txt(strings: &[&str]) -> RecordData {
        RecordData::Txt(strings.iter().map(|s| (*s).to_owned()).collect())
    }

    pub fn cname(target: &str) -> RecordData {
        RecordData::Cname(target.to_owned())
    }

    fn record_type(&self) -> Option<RecordType> {
        match self {
            RecordData::A(_) => Some(RecordType::A),
            RecordData::Aaaa(_) => Some(RecordType::AAAA),
            RecordData::Mx(..) | RecordData::NullMx => Some(RecordType::MX),
            RecordData::Txt(_) => Some(RecordType::TXT),
            RecordData::Cname(_) => Some(RecordType::CNAME),
            RecordData::ServFail => None,
        }
    }

    fn to_rdata(&self) -> Option<RData> {
        Some(match self {
            RecordData::A(ip) => RData::A(A(*ip)),
            RecordData::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            RecordData::Mx(preference, exchange) => RData::MX(MX::new(*preference, fqdn(exchange))),
            RecordData::NullMx => RData::MX(MX::new(0, Name::root())),
            RecordData::Txt(strings) => RData::TXT(TXT::new(strings.clone())),
            RecordData::Cname(target) => RData::CNAME(CNAME(fqdn(target))),
            RecordData::ServFail => return None,
        })
    }
}

type Zone = Vec<(String, RecordData)>;

struct Shared {
    zone: Mutex<Zone>,
    queries: Mutex<Vec<(String, RecordType)>>,
    tcp_queries: AtomicUsize,
    /// How long each UDP answer waits before it goes out.
    delay: Mutex<Duration>,
    stop: AtomicBool,
}

/// A running server; stops when dropped.
pub struct DnsServer {
    /// UDP and TCP address (same port).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Serves `zone` on 127.0.0.1, a free port.
    pub fn start<N: Into<String>>(zone: impl IntoIterator<Item = (N, RecordData)>) -> DnsServer {
        let shared = Arc::new(Shared {
            zone: Mutex::new(normalise_zone(zone)),
            queries: Mutex::new(Vec::new()),
            tcp_queries: AtomicUsize::new(0),
            delay: Mutex::new(Duration::ZERO),
            stop: AtomicBool::new(false),
        });
        let (udp, tcp) = bind_same_port();
        let addr = udp.local_addr().expect("UDP address");
        udp.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("UDP read timeout");
        let udp_shared = shared.clone();
        let tcp_shared = shared.clone();
        let threads = vec![
            std::thread::spawn(move || serve_udp(&udp, &udp_shared)),
            std::thread::spawn(move || serve_tcp(&tcp, &tcp_shared)),
        ];
        DnsServer {
            addr,
            shared,
            threads,
        }
    }

    /// Replaces the whole zone (answers have TTL 0, so it shows at once).
    pub fn set_zone<N: Into<String>>(&self, zone: impl IntoIterator<Item = (N, RecordData)>) {
        *self.shared.zone.lock().expect("zone lock") = normalise_zone(zone);
    }

    /// Adds records to the zone.
    pub fn add<N: Into<String>>(&self, records: impl IntoIterator<Item = (N, RecordData)>) {
        self.shared
            .zone
            .lock()
            .expect("zone lock")
            .extend(normalise_zone(records));
    }

    /// Holds every later UDP answer back this long, one at a time: a slow
    /// nameserver, for what may happen while a lookup waits.
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().expect("delay lock") = delay;
    }

    /// The questions asked so far: (name without trailing dot, type).
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.shared.queries.lock().expect("query log lock").clone()
    }

    /// How many queries came over TCP (after a truncated UDP answer).
    pub fn tcp_query_count(&self) -> usize {
        self.shared.tcp_queries.load(Ordering::SeqCst)
    }

    /// `nameservers = ["127.0.0.1:PORT"]`, for a daemon's `[dns]` section.
    pub fn nameservers_line(&self) -> String {
        format!("nameservers = [\"{}\"]", self.addr)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking TCP accept; UDP wakes on its read timeout.
        let _ = TcpStream::connect(self.addr);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn normalise_zone<N: Into<String>>(zone: impl IntoIterator<Item = (N, RecordData)>) -> Zone {
    zone.into_iter()
        .map(|(name, data)| (normalise(&name.into()), data))
        .collect()
}

fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    let name = normalise(name);
    if name.is_empty() {
        return Name::root();
    }
    Name::from_ascii(format!("{name}.")).unwrap_or_else(|e| panic!("bad test name {name:?}: {e}"))
}

/// A UDP socket and a TCP listener on one free loopback port.
fn bind_same_port() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP on loopback");
        let port = udp.local_addr().expect("UDP address").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP after 50 tries");
}

fn serve_udp(socket: &UdpSocket, shared: &Shared) {
    let mut buf = [0u8; 4096];
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        let limit = query
            .edns
            .as_ref()
            .map_or(CLASSIC_UDP_SIZE, |edns| usize::from(edns.max_payload()))
            .max(CLASSIC_UDP_SIZE);
        let response = answer(&query, shared);
        std::thread::sleep(*shared.delay.lock().expect("delay lock"));
        let Ok(mut bytes) = response.to_vec() else {
            continue;
        };
        if bytes.len() > limit {
            match response.truncate().to_vec() {
                Ok(truncated) => bytes = truncated,
                Err(_) => continue,
            }
        }
        let _ = socket.send_to(&bytes, peer);
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        std::thread::spawn(move || serve_tcp_connection(stream, &shared));
    }
}

/// RFC 1035 4.2.2: each message is preceded by its 2-byte length.
fn serve_tcp_connection(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() || shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut buf).is_err() {
            return;
        }
        let Ok(query) = Message::from_vec(&buf) else {
            return;
        };
        shared.tcp_queries.fetch_add(1, Ordering::SeqCst);
        let Ok(bytes) = answer(&query, shared).to_vec() else {
            return;
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return;
        };
        if stream.write_all(&len.to_be_bytes()).is_err() || stream.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// The response to one query, from the zone as it is now.
fn answer(query: &Message, shared: &Shared) -> Message {
    let mut response = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_queries(query.queries.iter().cloned());
    let Some(question) = query.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let qname = normalise(&question.name.to_ascii());
    let qtype = question.query_type;
    shared
        .queries
        .lock()
        .expect("query log lock")
        .push((qname.clone(), qtype));
    let zone = shared.zone.lock().expect("zone lock").clone();

    let mut name = qname.clone();
    for _ in 0..MAX_CNAME_HOPS {
        let here: Vec<&RecordData> = zone
            .iter()
            .filter(|(owner, _)| *owner == name)
            .map(|(_, data)| data)
            .collect();
        if here.contains(&&RecordData::ServFail) {
            response.metadata.response_code = ResponseCode::ServFail;
            response.answers.clear();
            return response;
        }
        let matching: Vec<&RecordData> = here
            .iter()
            .copied()
            .filter(|data| data.record_type() == Some(qtype))
            .collect();
        if !matching.is_empty() {
            for data in matching {
                push_answer(&mut response, &name, data);
            }
            return response;
        }
        // Follow an alias within the zone, as an authoritative server does.
        if let Some(RecordData::Cname(target)) = here
            .iter()
            .find(|data| matches!(data, RecordData::Cname(_)))
        {
            push_answer(&mut response, &name, &RecordData::Cname(target.clone()));
            name = normalise(target);
            continue;
        }
        if response.answers.is_empty() && !exists(&zone, &name) {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        break;
    }
    if response.answers.is_empty() {
        response.add_authority(soa_record());
    }
    response
}

fn push_answer(response: &mut Message, owner: &str, data: &RecordData) {
    if let Some(rdata) = data.to_rdata() {
        response.add_answer(Record::from_rdata(fqdn(owner), TTL, rdata));
    }
}

/// A name exists when it owns records or has names below it (RFC 8020).
fn exists(zone: &Zone, name: &str) -> bool {
    let suffix = format!(".{name}");
    zone.iter()
        .any(|(owner, _)| owner == name || owner.ends_with(&suffix))
}

/// The SOA sent with negative answers; minimum 0 so they are not cached.
fn soa_record() -> Record {
    let soa = SOA::new(
        fqdn("ns.test"),
        fqdn("hostmaster.test"),
        1,
        3600,
        600,
        86400,
        0,
    );
    Record::from_rdata(Name::root(), TTL, RData::SOA(soa))
}
