//! The byte stream under an SMTP session: plain TCP or TLS, a write buffer that
//! is flushed once per pipelined group, and a read buffer from which replies are
//! cut line by line (several replies per packet, or one reply over several
//! packets). Every wait on the network runs under a phase's timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

use super::body::{DotStuffed, data_terminator};
use super::reply::{MAX_REPLY_LINE, MAX_REPLY_LINES, Reply, ReplyLine};
use super::{Phase, SessionError};
pub use crate::smtp::stream::Stream;

/// Write buffer: a 10 KB message plus its envelope goes out in one write.
const WRITE_BUFFER: usize = 64 * 1024;
/// Read buffer: replies are small; a pipelined group of 100 fits easily.
const READ_BUFFER: usize = 8 * 1024;
/// Bytes of the body written under one data timeout.
const BODY_BLOCK: usize = 64 * 1024;

/// A reply together with the text of each of its lines (EHLO needs the lines).
pub struct ReplyWithLines {
    pub reply: Reply,
    pub lines: Vec<String>,
}

/// Buffered reading and writing of SMTP lines over a [`Stream`].
pub struct Transport {
    io: BufReader<BufWriter<Stream>>,
    /// The line being read, kept to reuse its allocation.
    line: Vec<u8>,
}

impl Transport {
    pub fn new(stream: Stream) -> Transport {
        let writer = BufWriter::with_capacity(WRITE_BUFFER, stream);
        Transport {
            io: BufReader::with_capacity(READ_BUFFER, writer),
            line: Vec::with_capacity(256),
        }
    }

    /// Opens the TCP connection with Nagle off: we always write whole groups
    /// and then wait for replies, so delaying small segments only adds latency.
    pub async fn connect(
        host: &str,
        port: u16,
        after: Duration,
    ) -> Result<TcpStream, SessionError> {
        let tcp = within(Phase::Connect, after, TcpStream::connect((host, port))).await?;
        tcp.set_nodelay(true).map_err(|source| SessionError::Io {
            phase: Phase::Connect,
            source,
        })?;
        Ok(tcp)
    }

    /// Writes all pieces and flushes once, so a pipelined group leaves in one
    /// TCP segment.
    pub async fn send_all(
        &mut self,
        phase: Phase,
        after: Duration,
        pieces: &[&[u8]],
    ) -> Result<(), SessionError> {
        let io = &mut self.io;
        within(phase, after, async {
            for piece in pieces {
                io.write_all(piece).await?;
            }
            io.flush().await
        })
        .await
    }

    /// Writes the message body dot-stuffed, then the end-of-data marker, and
    /// leaves the tail in the write buffer: the next write (the next
    /// envelope, RFC 2920 3.1) or [`Transport::flush`] takes it along.
    /// `after` bounds each block of `BODY_BLOCK` bytes, not the whole body
    /// (RFC 5321 4.5.3.2.5: the data timeout is per TCP send), so a slow
    /// reader that keeps reading gets a large message, and one that stops
    /// reading times out.
    pub async fn write_body(
        &mut self,
        phase: Phase,
        after: Duration,
        body: &[u8],
    ) -> Result<(), SessionError> {
        for piece in DotStuffed::new(body) {
            for block in piece.chunks(BODY_BLOCK) {
                within(phase, after, self.io.write_all(block)).await?;
            }
        }
        within(phase, after, self.io.write_all(data_terminator(body))).await
    }

    /// Sends whatever the write buffer holds.
    pub async fn flush(&mut self, phase: Phase, after: Duration) -> Result<(), SessionError> {
        within(phase, after, self.io.flush()).await
    }

    /// Writes one command line (CRLF added) and flushes it.
    pub async fn send_line(
        &mut self,
        phase: Phase,
        after: Duration,
        line: &str,
    ) -> Result<(), SessionError> {
        self.send_all(phase, after, &[line.as_bytes(), b"\r\n"])
            .await
    }

    /// Reads one complete (possibly multi-line) reply.
    pub async fn read_reply(
        &mut self,
        phase: Phase,
        after: Duration,
    ) -> Result<Reply, SessionError> {
        Ok(self.read_reply_with_lines(phase, after).await?.reply)
    }

    pub async fn read_reply_with_lines(
        &mut self,
        phase: Phase,
        after: Duration,
    ) -> Result<ReplyWithLines, SessionError> {
        match tokio::time::timeout(after, self.read_lines(phase)).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Timeout { phase, after }),
        }
    }

    /// The lines of one reply. Lines past [`MAX_REPLY_LINES`] are read and
    /// dropped (an EHLO listing a thousand extensions is still a server we
    /// can talk to); the phase's timeout bounds how long that may go on.
    async fn read_lines(&mut self, phase: Phase) -> Result<ReplyWithLines, SessionError> {
        let mut lines: Vec<String> = Vec::new();
        loop {
            self.read_line(phase).await?;
            let line = printable(&self.line);
            let is_last = ReplyLine::parse(&line)
                .map_err(|message| protocol(phase, message))?
                .is_last;
            if lines.len() < MAX_REPLY_LINES {
                lines.push(line);
            } else if is_last {
                // The last line decides the reply: it takes the last place.
                lines.pop();
                lines.push(line);
            }
            if is_last {
                break;
            }
        }
        // Parsing again is cheap and spares keeping borrows across the reads.
        let parsed: Vec<ReplyLine<'_>> = lines
            .iter()
            .map(|line| ReplyLine::parse(line))
            .collect::<Result<_, _>>()
            .map_err(|message| protocol(phase, message))?;
        let reply = Reply::from_lines(&parsed).map_err(|message| protocol(phase, message))?;
        let texts = parsed.iter().map(|line| line.text.to_string()).collect();
        Ok(ReplyWithLines {
            reply,
            lines: texts,
        })
    }

    /// Reads up to the next LF into `self.line`, without the CRLF (a bare LF is
    /// accepted too). A line over [`MAX_REPLY_LINE`] keeps its start and the
    /// rest is read and dropped: a 250 with a long text is still a 250, and
    /// failing on it would send the message again at every retry.
    async fn read_line(&mut self, phase: Phase) -> Result<(), SessionError> {
        self.line.clear();
        loop {
            let available = self
                .io
                .fill_buf()
                .await
                .map_err(|source| SessionError::Io { phase, source })?;
            if available.is_empty() {
                let source = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed by the server",
                );
                return Err(SessionError::Io { phase, source });
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let taken = newline.map_or(available.len(), |index| index + 1);
            let room = MAX_REPLY_LINE.saturating_sub(self.line.len());
            self.line.extend_from_slice(&available[..taken.min(room)]);
            self.io.consume(taken);
            if newline.is_some() {
                break;
            }
        }
        while matches!(self.line.last(), Some(b'\n' | b'\r')) {
            self.line.pop();
        }
        Ok(())
    }

    /// Whether the server closed the connection or sent something that no
    /// command asked for. Polls the socket once without waiting (a no-op
    /// waker: nobody needs waking, the answer is wanted now).
    pub fn has_unsolicited_input(&mut self) -> bool {
        if !self.io.buffer().is_empty() {
            return true;
        }
        let mut context = Context::from_waker(Waker::noop());
        // Ready with nothing: end of stream. Ready with bytes: a reply to
        // nothing, such as an idle-timeout 421 before the close. Pending:
        // the connection is quiet, as a usable one is.
        Pin::new(&mut self.io)
            .poll_fill_buf(&mut context)
            .is_ready()
    }

    /// Gives back the plain TCP stream for the TLS handshake after STARTTLS.
    /// Bytes already received after the 220 would be plaintext injected before
    /// the handshake (CVE-2011-0411 class), so they make the session fail.
    pub fn into_tcp(self, phase: Phase) -> Result<TcpStream, SessionError> {
        if !self.io.buffer().is_empty() {
            return Err(protocol(
                phase,
                "server sent data after its reply to STARTTLS".to_string(),
            ));
        }
        match self.io.into_inner().into_inner() {
            Stream::Plain(tcp) => Ok(tcp),
            Stream::Tls(_) => Err(protocol(
                phase,
                "STARTTLS on a connection that is already TLS".to_string(),
            )),
        }
    }

    /// Closes the write side (sends TLS close_notify first when in TLS).
    pub async fn shutdown(&mut self, after: Duration) {
        let _ = tokio::time::timeout(after, self.io.shutdown()).await;
    }
}

/// A reply line as text with its control characters (but tab) and its
/// bidirectional overrides shown as `?`: it goes into events, the queue's
/// last replies and terminals, where either can forge what is shown.
fn printable(line: &[u8]) -> String {
    let hidden = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}')
    };
    String::from_utf8_lossy(line)
        .chars()
        .map(|c| if hidden(c) { '?' } else { c })
        .collect()
}

fn protocol(phase: Phase, message: String) -> SessionError {
    SessionError::Protocol { phase, message }
}

/// Runs an I/O future under the phase's timeout, naming the phase in errors.
pub async fn within<T>(
    phase: Phase,
    after: Duration,
    work: impl Future<Output = io::Result<T>>,
) -> Result<T, SessionError> {
    match tokio::time::timeout(after, work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) => Err(SessionError::Io { phase, source }),
        Err(_) => Err(SessionError::Timeout { phase, after }),
    }
}
