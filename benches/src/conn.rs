//! A buffered SMTP connection usable by both sides: reads CRLF lines, replies
//! and DATA bodies from one read buffer, and collects outgoing bytes in one
//! write buffer.
//!
//! Pending output is flushed automatically just before a read would block.
//! That is exactly what PIPELINING needs: a server answers every command that
//! is already buffered in one write, and a client's pipelined commands leave in
//! one write too.

use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::reply::{Reply, ReplyParseError};

/// Bytes read from the socket at most per read call; also the longest partial
/// DATA line kept in memory before it is passed on.
pub const READ_BUFFER_SIZE: usize = 64 * 1024;

/// Longest command or reply line, CRLF included (RFC 5321 asks for 512; we
/// are generous because AUTH lines carry base64).
pub const MAX_LINE_LEN: usize = 4096;

/// Most lines accepted in one multi-line reply.
pub const MAX_REPLY_LINES: usize = 100;

/// Any byte stream a session can run over: plain TCP or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Debug, Error)]
pub enum ConnError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the peer")]
    Closed,
    #[error("the peer did not read or answer for {0:?}")]
    Timeout(Duration),
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    LineTooLong,
    #[error("bad reply: {0}")]
    BadReply(#[from] ReplyParseError),
}

/// How a DATA body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEnd {
    /// The whole message is in the output buffer.
    Complete,
    /// The message went past the size limit; it was read to its end but not kept.
    TooBig,
}

pub struct SmtpConn {
    stream: Box<dyn Stream>,
    read_buf: Box<[u8]>,
    /// Unconsumed input is `read_buf[start..end]`.
    start: usize,
    end: usize,
    write_buf: Vec<u8>,
    /// Longest wait for one read, one write-out or a TLS handshake.
    io_timeout: Option<Duration>,
}

impl SmtpConn {
    pub fn new(stream: Box<dyn Stream>, io_timeout: Option<Duration>) -> Self {
        SmtpConn {
            stream,
            read_buf: vec![0; READ_BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            write_buf: Vec::with_capacity(16 * 1024),
            io_timeout,
        }
    }

    /// Flushes pending output, drops buffered input, and replaces the stream
    /// by what `handshake` makes of it (a TLS stream). Plaintext the peer
    /// sent ahead of the handshake is dropped, not taken as commands (RFC 3207
    /// section 4.2).
    pub async fn start_tls<F, Fut>(&mut self, handshake: F) -> Result<(), ConnError>
    where
        F: FnOnce(Box<dyn Stream>) -> Fut,
        Fut: Future<Output = std::io::Result<Box<dyn Stream>>>,
    {
        self.flush().await?;
        self.start = 0;
        self.end = 0;
        let detached: Box<dyn Stream> =
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink()));
        let plain = std::mem::replace(&mut self.stream, detached);
        self.stream = match self.io_timeout {
            Some(limit) => tokio::time::timeout(limit, handshake(plain))
                .await
                .map_err(|_| ConnError::Timeout(limit))??,
            None => handshake(plain).await?,
        };
        Ok(())
    }

    /// Queues bytes to send; they leave at the next flush or read.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.write_buf.extend_from_slice(bytes);
    }

    /// Queues one reply line `CODE TEXT` with its CRLF.
    pub fn queue_reply(&mut self, code: u16, text: &str) {
        use std::io::Write;
        // Writing into a Vec cannot fail.
        let _ = write!(self.write_buf, "{code} {text}\r\n");
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        let write_out = async {
            if !self.write_buf.is_empty() {
                self.stream.write_all(&self.write_buf).await?;
                self.write_buf.clear();
            }
            // TLS streams hold encrypted records until flushed.
            self.stream.flush().await
        };
        match self.io_timeout {
            Some(limit) => tokio::time::timeout(limit, write_out)
                .await
                .map_err(|_| ConnError::Timeout(limit))??,
            None => write_out.await?,
        }
        Ok(())
    }

    /// Reads one line and returns it without its line ending. A line longer
    /// than `MAX_LINE_LEN` is read to its end, dropped, and reported as
    /// `LineTooLong`; the connection stays usable.
    pub async fn read_line(&mut self) -> Result<&[u8], ConnError> {
        let mut discarding = false;
        loop {
            if let Some(pos) = find_lf(&self.read_buf[self.start..self.end]) {
                let (line_start, line_end) = (self.start, self.start + pos + 1);
                self.start = line_end;
                if discarding || line_end - line_start > MAX_LINE_LEN {
                    return Err(ConnError::LineTooLong);
                }
                return Ok(trim_line_ending(&self.read_buf[line_start..line_end]));
            }
            if self.end - self.start >= MAX_LINE_LEN {
                discarding = true;
                self.start = self.end;
            }
            self.fill().await?;
        }
    }

    /// Reads one (possibly multi-line) reply.
    pub async fn read_reply(&mut self) -> Result<Reply, ConnError> {
        let mut reply = Reply::default();
        for _ in 0..MAX_REPLY_LINES {
            let line = self.read_line().await?;
            if reply.add_line(line)? {
                return Ok(reply);
            }
        }
        Err(ReplyParseError::TooManyLines.into())
    }

    /// Reads a DATA body up to the lone "." line, removing dot-stuffing, into
    /// `message` (cleared first). Past `max_size` bytes the rest is read and
    /// dropped so the session can go on.
    pub async fn read_data(
        &mut self,
        max_size: usize,
        message: &mut Vec<u8>,
    ) -> Result<DataEnd, ConnError> {
        message.clear();
        let mut body = BodyCollector {
            message,
            max_size,
            too_big: false,
        };
        let mut at_line_start = true;
        loop {
            if let Some(pos) = find_lf(&self.read_buf[self.start..self.end]) {
                let (line_start, line_end) = (self.start, self.start + pos + 1);
                self.start = line_end;
                let line = &self.read_buf[line_start..line_end];
                if at_line_start && line == b".\r\n" {
                    return Ok(body.end());
                }
                body.push(unstuff(line, at_line_start));
                at_line_start = true;
                continue;
            }
            if self.end - self.start == self.read_buf.len() {
                // A line longer than the whole buffer cannot be the final dot:
                // pass its first part on and keep reading.
                body.push(unstuff(&self.read_buf[self.start..self.end], at_line_start));
                self.start = self.end;
                at_line_start = false;
            }
            self.fill().await?;
        }
    }

    /// Reads and drops everything until the peer closes: the "stall" fault.
    pub async fn drain_until_closed(&mut self) {
        self.io_timeout = None;
        loop {
            self.start = self.end;
            if self.fill().await.is_err() {
                return;
            }
        }
    }

    /// Flushes pending output, then reads more input into the buffer.
    async fn fill(&mut self) -> Result<(), ConnError> {
        self.flush().await?;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.read_buf.len() {
            self.read_buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let free = &mut self.read_buf[self.end..];
        let read = match self.io_timeout {
            Some(limit) => tokio::time::timeout(limit, self.stream.read(free))
                .await
                .map_err(|_| ConnError::Timeout(limit))??,
            None => self.stream.read(free).await?,
        };
        if read == 0 {
            return Err(ConnError::Closed);
        }
        self.end += read;
        Ok(())
    }
}

/// Appends DATA lines to a message until it passes its size limit.
struct BodyCollector<'a> {
    message: &'a mut Vec<u8>,
    max_size: usize,
    too_big: bool,
}

impl BodyCollector<'_> {
    fn push(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.message.len() + bytes.len() > self.max_size {
            self.too_big = true;
            self.message.clear();
            return;
        }
        self.message.extend_from_slice(bytes);
    }

    fn end(self) -> DataEnd {
        if self.too_big {
            DataEnd::TooBig
        } else {
            DataEnd::Complete
        }
    }
}

fn find_lf(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

fn trim_line_ending(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Removes the dot that the sender added in front of a line starting with a dot.
fn unstuff(line: &[u8], at_line_start: bool) -> &[u8] {
    if at_line_start && line.first() == Some(&b'.') {
        &line[1..]
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, duplex};

    async fn conn_with_input(input: &[u8]) -> SmtpConn {
        let (client, server) = duplex(READ_BUFFER_SIZE * 4);
        let input = input.to_vec();
        tokio::spawn(async move {
            let mut client = client;
            client.write_all(&input).await.unwrap();
            // Keep the other end open until the input is consumed.
            let mut sink = Vec::new();
            let _ = client.read_to_end(&mut sink).await;
        });
        SmtpConn::new(Box::new(server), Some(Duration::from_secs(10)))
    }

    #[tokio::test]
    async fn reads_pipelined_lines_in_order() {
        let mut conn = conn_with_input(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n").await;
        assert_eq!(conn.read_line().await.unwrap(), b"MAIL FROM:<a@b>");
        assert_eq!(conn.read_line().await.unwrap(), b"RCPT TO:<c@d>");
        assert_eq!(conn.read_line().await.unwrap(), b"DATA");
    }

    #[tokio::test]
    async fn too_long_line_is_reported_and_skipped() {
        let mut input = vec![b'x'; MAX_LINE_LEN * 3];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut conn = conn_with_input(&input).await;
        assert!(matches!(
            conn.read_line().await,
            Err(ConnError::LineTooLong)
        ));
        assert_eq!(conn.read_line().await.unwrap(), b"NOOP");
    }

    #[tokio::test]
    async fn data_is_unstuffed_and_ends_at_lone_dot() {
        let mut conn = conn_with_input(b"a\r\n..b\r\n.\r\nQUIT\r\n").await;
        let mut message = Vec::new();
        let end = conn.read_data(1000, &mut message).await.unwrap();
        assert_eq!(end, DataEnd::Complete);
        assert_eq!(message, b"a\r\n.b\r\n");
        assert_eq!(conn.read_line().await.unwrap(), b"QUIT");
    }

    #[tokio::test]
    async fn data_longer_than_buffer_is_kept_whole() {
        let mut input = vec![b'y'; READ_BUFFER_SIZE * 2 + 7];
        input.extend_from_slice(b"\r\n.\r\n");
        let mut conn = conn_with_input(&input).await;
        let mut message = Vec::new();
        let end = conn.read_data(usize::MAX, &mut message).await.unwrap();
        assert_eq!(end, DataEnd::Complete);
        assert_eq!(message.len(), READ_BUFFER_SIZE * 2 + 7 + 2);
    }

    #[tokio::test]
    async fn oversized_data_is_read_to_the_end() {
        let mut conn = conn_with_input(b"0123456789\r\n0123456789\r\n.\r\nNOOP\r\n").await;
        let mut message = Vec::new();
        let end = conn.read_data(15, &mut message).await.unwrap();
        assert_eq!(end, DataEnd::TooBig);
        assert_eq!(conn.read_line().await.unwrap(), b"NOOP");
    }

    #[tokio::test]
    async fn eof_is_closed() {
        let (client, server) = duplex(64);
        drop(client);
        let mut conn = SmtpConn::new(Box::new(server), None);
        assert!(matches!(conn.read_line().await, Err(ConnError::Closed)));
    }
}
