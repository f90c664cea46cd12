//! Buffered reading and writing on one SMTP server connection.
//!
//! Reads command lines with a length limit and the DATA section up to its
//! terminating `CRLF.CRLF`, and batches replies so that a pipelining client
//! gets all answers to its group in one write. The stream may switch from
//! plain TCP to TLS (STARTTLS); the read buffer is emptied at that moment so
//! that nothing sent in clear text can be taken as sent under TLS.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::budget::{BUDGET_WAIT, DataBudget, Reservation};
pub use super::stream::Stream;
use crate::values::Reply;

const READ_CHUNK: usize = 16 * 1024;
/// Room for the next read below which the buffer grows by `READ_CHUNK`.
const MIN_READ_ROOM: usize = READ_CHUNK / 4;

/// What `read_line` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line, without its line ending.
    Complete(Vec<u8>),
    /// The line passed the limit; it was read to its end and thrown away.
    TooLong,
    /// The client closed the connection.
    Closed,
}

/// The message read after DATA's 354.
#[derive(Debug)]
pub struct DataSection {
    /// The message with CRLF line endings and dot-stuffing removed.
    pub body: Vec<u8>,
    /// More than the size limit was sent: the body was cut and must be refused.
    pub too_big: bool,
    /// The header section passed `MAX_HEADER_BYTES` or `MAX_HEADER_LINES`:
    /// the body was dropped and must be refused.
    pub header_too_big: bool,
    /// The listener's DATA budget had no room: the body was dropped and
    /// the client should try again later.
    pub over_budget: bool,
}

pub struct Connection {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    /// The last read took all the room the buffer had.
    read_filled_room: bool,
    out: Vec<u8>,
}

impl Connection {
    pub fn new(stream: Stream) -> Connection {
        Connection {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            read_filled_room: false,
            out: Vec::with_capacity(1024),
        }
    }

    /// Whether the client already sent more than we have handled (pipelining).
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.buf.len()
    }

    /// Queues a reply; it goes out at the next `flush`.
    pub fn queue_reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Lets `write` append to the pending output (no copy through a
    /// temporary buffer).
    pub fn queue_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.out);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let sent = self.send_now(0);
            self.stream.write_all(&self.out[sent..]).await?;
            self.out.clear();
        }
        self.stream.flush().await
    }

    /// Sends the queued replies and ends our side of the stream: the
    /// session is over. On plain TCP the replies and the FIN leave in one
    /// segment (the replies are held with MSG_MORE until the shutdown), so
    /// a connection's last reply (the 221 after QUIT) costs one trip
    /// through the peer's receive path instead of two. The FIN goes after
    /// the data, so the client reads every reply before its end of stream.
    pub async fn finish(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if !matches!(self.stream, Stream::Plain(_)) {
            return self.flush().await;
        }
        let sent = self.send_now(libc::MSG_MORE);
        // What did not fit goes the usual way (without MSG_MORE, so it
        // pushes out what was held).
        self.stream.write_all(&self.out[sent..]).await?;
        self.out.clear();
        self.stream.shutdown().await
    }

    /// Sends as much of the queued output as the socket takes now, straight
    /// to the kernel; returns how many bytes went. The first write on a
    /// fresh connection (the greeting) does not wait for tokio to learn
    /// from epoll that the socket is writable, which saves a wake-up and a
    /// poll of the session per connection. Errors are left for the
    /// following `write_all`, which meets them again and reports them.
    fn send_now(&mut self, flags: libc::c_int) -> usize {
        let Stream::Plain(tcp) = &self.stream else {
            return 0;
        };
        let socket = socket2::SockRef::from(tcp);
        let mut sent = 0;
        while sent < self.out.len() {
            match socket.send_with_flags(&self.out[sent..], flags | libc::MSG_NOSIGNAL) {
                Ok(0) => break,
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        sent
    }

    /// Hands the stream over for a TLS handshake, dropping anything the
    /// client pipelined after STARTTLS (CVE-2011-0411 style injection).
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    ///
    /// The buffer grows only when a read filled all its room (the client
    /// sends faster than we read: bigger reads save calls). The bytes
    /// left over by a read that ended inside a line move to the front
    /// instead: growing whenever a read ended inside a line doubled the
    /// buffer of nearly every connection whose message came in two reads,
    /// a copy and a large allocation to free that a connection per
    /// message paid each time.
    async fn fill(&mut self) -> io::Result<bool> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > READ_CHUNK || self.room() < MIN_READ_ROOM {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Reads into the spare capacity: zeroing READ_CHUNK bytes before
        // every read (resize) cost a memset per command line.
        if self.room() < MIN_READ_ROOM || self.read_filled_room {
            self.buf.reserve(READ_CHUNK);
        }
        let room = self.room();
        let n = self.stream.read_buf(&mut self.buf).await?;
        self.read_filled_room = n == room;
        Ok(n > 0)
    }

    /// Spare capacity of the read buffer: what the next read may take.
    fn room(&self) -> usize {
        self.buf.capacity() - self.buf.len()
    }

    /// Reads one line of at most `max` bytes (line ending included).
    pub async fn read_line(&mut self, max: usize) -> io::Result<Line> {
        let mut too_long = false;
        loop {
            let pending = &self.buf[self.start..];
            if let Some(pos) = memchr::memchr(b'\n', pending) {
                let line_end = self.start + pos;
                let line = trim_cr(&self.buf[self.start..line_end]).to_vec();
                self.start = line_end + 1;
                if too_long || pos + 1 > max {
                    return Ok(Line::TooLong);
                }
                return Ok(Line::Complete(line));
            }
            if pending.len() > max {
                // Keep reading to the line's end, but not into memory.
                too_long = true;
                self.start = self.buf.len();
            }
            if !self.fill().await? {
                return Ok(Line::Closed);
            }
        }
    }

    /// Reads the DATA section up to `CRLF.CRLF`. Only that sequence ends
    /// it (the SMTP smuggling defence); bare LF and bare CR become CRLF.
    /// The message buffer starts at `expected` bytes (room the caller
    /// already reserved, from SIZE) and each growth is covered in `budget`;
    /// when no room comes within `BUDGET_WAIT`, the rest is read and thrown
    /// away and the section is flagged `over_budget`.
    pub async fn read_data(
        &mut self,
        limits: DataLimits,
        budget: &DataBudget,
        reservation: &mut Reservation,
    ) -> io::Result<Option<DataSection>> {
        let mut reader = DataReader::new(limits.max_size);
        reader.grow_to(limits.expected);
        loop {
            let (consumed, done) = reader.feed(&self.buf[self.start..]);
            self.start += consumed;
            let allocated = reader.allocated();
            if allocated > 0 && !budget.reserve(reservation, allocated, BUDGET_WAIT).await {
                reader.drop_over_budget();
            }
            if done {
                return Ok(Some(reader.finish()));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }
}

/// What `read_data` is told about the message to come.
#[derive(Debug, Clone, Copy)]
pub struct DataLimits {
    pub max_size: u64,
    /// Bytes announced with SIZE (and reserved), 0 if none.
    pub expected: usize,
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Longest header section accepted (Exim's `header_maxsize`): admission
/// parses and edits the header in memory.
pub const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Most header lines accepted (folded lines count one by one).
pub const MAX_HEADER_LINES: usize = 10_000;

/// A line still without its LF past this many bytes is taken in pieces, so
/// that one endless line cannot grow the read buffer.
const MAX_PENDING_LINE: usize = 64 * 1024;

/// The DATA state machine, separate from I/O so it can be tested (and
/// fuzzed) on byte slices.
pub struct DataReader {
    body: Vec<u8>,
    max_size: u64,
    too_big: bool,
    header_too_big: bool,
    over_budget: bool,
    /// The previous line ended in CRLF (the DATA command line counts).
    prev_crlf: bool,
    /// Part of the current line was already taken (a very long line).
    mid_line: bool,
    in_header: bool,
    header_bytes: usize,
    header_lines: usize,
}

impl DataReader {
    pub fn new(max_size: u64) -> DataReader {
        // Small enough to come from the allocator's per-thread cache: a
        // 64 KiB reserve per message showed in profiles. Larger bodies grow.
        let reserve = max_size.min(16 * 1024) as usize;
        DataReader {
            body: Vec::with_capacity(reserve),
            max_size,
            too_big: false,
            header_too_big: false,
            over_budget: false,
            prev_crlf: true,
            mid_line: false,
            in_header: true,
            header_bytes: 0,
            header_lines: 0,
        }
    }

    /// Consumes complete lines from `input` (and the start of a very long
    /// one); returns how many bytes were used and whether the terminating
    /// line was seen. The caller keeps the rest and feeds it again with more.
    pub fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let Some(pos) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_PENDING_LINE {
                    // Keep a trailing CR back: it may be the start of CRLF.
                    let take = rest.len() - usize::from(rest.ends_with(b"\r"));
                    self.line_piece(&rest[..take]);
                    used += take;
                }
                return (used, false);
            };
            used += pos + 1;
            if self.line_end(&rest[..pos]) {
                return (used, true);
            }
        }
    }

    /// The end of a line (LF excluded); true for the terminating ".".
    fn line_end(&mut self, raw: &[u8]) -> bool {
        let crlf = raw.last() == Some(&b'\r');
        let line = if crlf { &raw[..raw.len() - 1] } else { raw };
        let whole_line = !self.mid_line;
        if whole_line && line == b"." && crlf && self.prev_crlf {
            return true;
        }
        self.prev_crlf = crlf;
        self.mid_line = false;
        let line = if whole_line { unstuff(line) } else { line };
        if self.in_header {
            if whole_line && line.is_empty() {
                self.in_header = false;
            } else {
                self.count_header(line.len() + 2, 1);
            }
        }
        self.push(line, true);
        false
    }

    /// The first or a middle part of a line too long to wait for its end.
    fn line_piece(&mut self, piece: &[u8]) {
        let piece = if self.mid_line { piece } else { unstuff(piece) };
        self.mid_line = true;
        if self.in_header {
            self.count_header(piece.len(), 0);
        }
        self.push(piece, false);
    }

    fn count_header(&mut self, bytes: usize, lines: usize) {
        self.header_bytes = self.header_bytes.saturating_add(bytes);
        self.header_lines += lines;
        if self.header_bytes > MAX_HEADER_BYTES || self.header_lines > MAX_HEADER_LINES {
            self.header_too_big = true;
            self.body = Vec::new();
        }
    }

    /// Whether the body is being read and thrown away.
    fn discarding(&self) -> bool {
        self.too_big || self.header_too_big || self.over_budget
    }

    /// Bytes the message buffer holds allocated.
    pub fn allocated(&self) -> usize {
        self.body.capacity()
    }

    /// Makes the buffer hold `capacity` bytes at least.
    pub fn grow_to(&mut self, capacity: usize) {
        self.body
            .reserve_exact(capacity.saturating_sub(self.body.len()));
    }

    /// No room in the budget: throw the body away and read on to its end.
    pub fn drop_over_budget(&mut self) {
        self.over_budget = true;
        self.body = Vec::new();
    }

    fn push(&mut self, text: &[u8], line_ends: bool) {
        if self.discarding() {
            return;
        }
        let ending = if line_ends { 2 } else { 0 };
        if (self.body.len() + text.len() + ending) as u64 > self.max_size {
            self.too_big = true;
            self.body = Vec::new();
            return;
        }
        // Grow by doubling, but never past the largest message allowed: the
        // buffer's capacity is what the DATA budget counts, and doubling
        // alone could reserve twice `max_size` for one message.
        let needed = self.body.len() + text.len() + ending;
        if needed > self.body.capacity() {
            let max = usize::try_from(self.max_size).unwrap_or(usize::MAX);
            let target = (self.body.capacity() * 2).clamp(needed, max.max(needed));
            self.body.reserve_exact(target - self.body.len());
        }
        // Bare CR inside a line becomes a line break of its own.
        let mut rest = text;
        while let Some(cr) = memchr::memchr(b'\r', rest) {
            self.body.extend_from_slice(&rest[..cr]);
            self.body.extend_from_slice(b"\r\n");
            rest = &rest[cr + 1..];
        }
        self.body.extend_from_slice(rest);
        if line_ends {
            self.body.extend_from_slice(b"\r\n");
        }
    }

    pub fn finish(self) -> DataSection {
        DataSection {
            body: self.body,
            too_big: self.too_big,
            header_too_big: self.header_too_big,
            over_budget: self.over_budget,
        }
    }
}

/// Removes the dot that stuffing added; a lone "." that did not arrive as
/// CRLF.CRLF is content and stays.
fn unstuff(line: &[u8]) -> &[u8] {
    match line.strip_prefix(b".") {
        Some(rest) if !rest.is_empty() => rest,
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection on loopback and the client's end of it.
    async fn connected() -> (tokio::net::TcpStream, Connection) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, Connection::new(Stream::Plain(server)))
    }

    /// `n` bytes of 100-byte command lines.
    fn lines(n: usize) -> Vec<u8> {
        let mut line = b"x".repeat(98);
        line.extend_from_slice(b"\r\n");
        line.repeat(n / 100)
    }

    #[tokio::test]
    async fn a_line_cut_by_a_read_moves_to_the_front_and_a_burst_grows_the_buffer() {
        let (mut client, mut conn) = connected().await;
        // Most of the buffer, ending inside a line; the rest comes later.
        let mut first = lines(READ_CHUNK - 1200);
        first.extend_from_slice(b"the start of a line ");
        client.write_all(&first).await.unwrap();
        for _ in 0..(READ_CHUNK - 1200) / 100 {
            assert!(matches!(
                conn.read_line(1000).await.unwrap(),
                Line::Complete(_)
            ));
        }
        client.write_all(b"and its end\r\n").await.unwrap();
        let line = conn.read_line(1000).await.unwrap();
        assert_eq!(
            line,
            Line::Complete(b"the start of a line and its end".to_vec())
        );
        assert_eq!(conn.buf.capacity(), READ_CHUNK, "grew for a cut line");

        // A client that sends faster than one buffer's worth per read.
        let burst = tokio::spawn(async move {
            client.write_all(&lines(8 * READ_CHUNK)).await.unwrap();
            client
        });
        for _ in 0..8 * READ_CHUNK / 100 {
            assert!(matches!(
                conn.read_line(1000).await.unwrap(),
                Line::Complete(_)
            ));
        }
        burst.await.unwrap();
        assert!(conn.buf.capacity() > READ_CHUNK, "never grew for a burst");
    }

    fn data(input: &[u8], max: u64) -> (Option<Vec<u8>>, usize, bool) {
        let mut r = DataReader::new(max);
        let (used, done) = r.feed(input);
        let s = r.finish();
        (done.then_some(s.body), used, s.too_big)
    }

    #[test]
    fn the_buffer_never_grows_past_the_largest_message() {
        let max = 100_000;
        let mut r = DataReader::new(max);
        let line = [b'a'; 998];
        let mut input = Vec::new();
        while input.len() < 90_000 {
            input.extend_from_slice(&line);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let (_, done) = r.feed(&input);
        assert!(done);
        assert!(r.allocated() as u64 <= max, "{} bytes held", r.allocated());
    }

    #[test]
    fn ends_only_at_crlf_dot_crlf() {
        let (body, used, _) = data(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n", 1000);
        assert_eq!(body.unwrap(), b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(used, 24);
        // Smuggling attempts: LF.LF, CRLF.LF and LF.CRLF do not end DATA.
        for attack in [
            &b"a\n.\nMAIL FROM:<x@y.z>\r\n"[..],
            b"a\r\n.\nRSET\r\n",
            b"a\n.\r\nRSET\r\n",
        ] {
            let (body, _, _) = data(attack, 1000);
            assert!(
                body.is_none(),
                "{:?} ended DATA",
                String::from_utf8_lossy(attack)
            );
        }
    }

    #[test]
    fn normalises_line_endings_and_unstuffs() {
        let (body, _, _) = data(b"a\nb\rc\r\n..dot\r\n.\nx\r\n.\r\n", 1000);
        assert_eq!(body.unwrap(), b"a\r\nb\r\nc\r\n.dot\r\n.\r\nx\r\n");
    }

    #[test]
    fn over_size_is_read_to_the_end_and_flagged() {
        let mut input = b"x".repeat(5000);
        input.extend_from_slice(b"\r\n.\r\n");
        let (body, used, too_big) = data(&input, 1000);
        assert!(too_big);
        assert!(body.unwrap().is_empty());
        assert_eq!(used, input.len());
    }

    /// Feeds `input` in 16 KiB reads, keeping what was not used, as
    /// `Connection::read_data` does; whether the end was seen.
    fn feed_like_a_connection(r: &mut DataReader, input: &[u8]) -> bool {
        let mut pending = Vec::new();
        for chunk in input.chunks(READ_CHUNK) {
            pending.extend_from_slice(chunk);
            let (used, done) = r.feed(&pending);
            pending.drain(..used);
            assert!(pending.len() <= MAX_PENDING_LINE + READ_CHUNK);
            if done {
                return true;
            }
        }
        false
    }

    #[test]
    fn an_endless_line_is_taken_in_pieces() {
        let mut r = DataReader::new(10 << 20);
        let mut line = b".".to_vec();
        line.extend(b"y".repeat(3 * MAX_PENDING_LINE));
        line.push(b'\r');
        let (used, done) = r.feed(&line);
        assert!(!done);
        assert_eq!(used, line.len() - 1, "all but the trailing CR");
        assert_eq!(r.feed(b"\r\n.\r\n"), (5, true));
        let body = r.finish().body;
        assert_eq!(body.len(), 3 * MAX_PENDING_LINE + 2, "unstuffed once");
        assert!(body.ends_with(b"y\r\n"));
        // A "." at the start of a later piece is content, not stuffing.
        let mut r = DataReader::new(10 << 20);
        let mut input = b"z".repeat(MAX_PENDING_LINE + 1);
        input.extend_from_slice(b".\r\n.\r\n");
        assert!(feed_like_a_connection(&mut r, &input));
        assert!(r.finish().body.ends_with(b"z.\r\n"));
    }

    #[test]
    fn header_bombs_are_flagged() {
        let mut many = b"X-H: v\r\n".repeat(MAX_HEADER_LINES + 1);
        many.extend_from_slice(b"\r\nbody\r\n.\r\n");
        let mut r = DataReader::new(100 << 20);
        assert_eq!(r.feed(&many), (many.len(), true));
        let s = r.finish();
        assert!(s.header_too_big && s.body.is_empty());

        let mut long = b"Subject: ".to_vec();
        long.extend(b"a".repeat(MAX_HEADER_BYTES));
        long.extend_from_slice(b"\r\n\r\nbody\r\n.\r\n");
        let mut r = DataReader::new(100 << 20);
        assert!(feed_like_a_connection(&mut r, &long));
        assert!(r.finish().header_too_big);

        // The same number of lines in the body is fine.
        let mut body_lines = b"Subject: x\r\n\r\n".to_vec();
        body_lines.extend(b"line\r\n".repeat(MAX_HEADER_LINES + 1));
        body_lines.extend_from_slice(b".\r\n");
        let mut r = DataReader::new(100 << 20);
        assert_eq!(r.feed(&body_lines), (body_lines.len(), true));
        assert!(!r.finish().header_too_big);
    }

    #[test]
    fn lines_split_across_reads() {
        let mut r = DataReader::new(1000);
        assert_eq!(r.feed(b"hel"), (0, false));
        assert_eq!(r.feed(b"hello\r\n."), (7, false));
        assert_eq!(r.feed(b".\r"), (0, false));
        assert_eq!(r.feed(b".\r\n"), (3, true));
        assert_eq!(r.finish().body, b"hello\r\n");
    }
}
