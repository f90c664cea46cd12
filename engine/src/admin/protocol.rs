//! The admin protocol's frames: one JSON object per line each way.
//!
//! Request: `{"cmd": "server.put", "args": {...}}` (`args` optional).
//! Response: `{"ok": true, "result": ...}` or
//! `{"ok": false, "error": {"code": "...", "message": "..."}}`.
//! A line over `MAX_REQUEST_BYTES` is read to its end and thrown away, so
//! a bad request costs the client one error response, not its connection.

use serde_json::{Map, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Bumped when a command changes incompatibly; `hello` returns it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line, newline excluded.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Why a request failed: a stable `code` for scripts and a message naming
/// what to fix for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AdminError {
    pub code: &'static str,
    pub message: String,
}

impl AdminError {
    pub fn new(code: &'static str, message: impl Into<String>) -> AdminError {
        AdminError {
            code,
            message: message.into(),
        }
    }

    /// A missing or wrongly typed argument.
    pub fn bad_args(message: impl Into<String>) -> AdminError {
        AdminError::new("bad_args", message)
    }

    pub fn not_found(message: impl Into<String>) -> AdminError {
        AdminError::new("not_found", message)
    }

    pub fn internal(message: impl Into<String>) -> AdminError {
        AdminError::new("internal", message)
    }
}

/// One line read from a client.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line (in the caller's buffer), newline removed.
    Line,
    /// A line longer than `MAX_REQUEST_BYTES`, discarded.
    TooLarge,
}

/// Reads the next line into `buf`; `None` at the end of the stream. A last
/// line without a newline still counts.
pub async fn read_frame<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Frame>> {
    buf.clear();
    let mut too_large = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (too_large, buf.is_empty()) {
                (true, _) => Some(Frame::TooLarge),
                (false, true) => None,
                (false, false) => Some(Frame::Line),
            });
        }
        let newline = memchr::memchr(b'\n', available);
        let chunk = &available[..newline.unwrap_or(available.len())];
        if !too_large && buf.len() + chunk.len() > MAX_REQUEST_BYTES {
            too_large = true;
            buf.clear();
            buf.shrink_to(64 * 1024);
        }
        if !too_large {
            buf.extend_from_slice(chunk);
        }
        let used = newline.map_or(available.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(if too_large {
                Frame::TooLarge
            } else {
                Frame::Line
            }));
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub cmd: String,
    pub args: Map<String, Value>,
}

pub fn parse_request(line: &[u8]) -> Result<Request, AdminError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| AdminError::new("bad_json", format!("the request is not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(AdminError::bad_args(
            "the request must be a JSON object with `cmd` and `args`",
        ));
    };
    let cmd = match object.remove("cmd") {
        Some(Value::String(cmd)) => cmd,
        Some(_) => return Err(AdminError::bad_args("cmd: must be a string")),
        None => return Err(AdminError::bad_args("cmd: missing")),
    };
    let args = match object.remove("args") {
        Some(Value::Object(args)) => args,
        None | Some(Value::Null) => Map::new(),
        Some(_) => return Err(AdminError::bad_args("args: must be an object")),
    };
    if let Some(extra) = object.keys().next() {
        return Err(AdminError::bad_args(format!(
            "{extra}: unknown field (a request has `cmd` and `args`)"
        )));
    }
    Ok(Request { cmd, args })
}

/// The response line, newline included.
pub fn response_line(result: &Result<Value, AdminError>) -> Vec<u8> {
    let value = match result {
        Ok(result) => serde_json::json!({"ok": true, "result": result}),
        Err(e) => serde_json::json!({
            "ok": false,
            "error": {"code": e.code, "message": e.message},
        }),
    };
    let mut line = serde_json::to_vec(&value).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    line.push(b'\n');
    line
}

/// Typed access to a request's arguments; errors name the field.
pub struct Args<'a>(pub &'a Map<String, Value>);

impl<'a> Args<'a> {
    pub fn str(&self, field: &str) -> Result<&'a str, AdminError> {
        self.opt_str(field)?
            .ok_or_else(|| AdminError::bad_args(format!("{field}: missing")))
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&'a str>, AdminError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(AdminError::bad_args(format!("{field}: must be a string"))),
        }
    }

    pub fn opt_u64(&self, field: &str) -> Result<Option<u64>, AdminError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                AdminError::bad_args(format!("{field}: must be a non-negative integer"))
            }),
        }
    }

    /// The arguments as a whole object of type `T`; serde's message names
    /// the field at fault.
    pub fn object<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T, AdminError> {
        serde_json::from_value(Value::Object(self.0.clone()))
            .map_err(|e| AdminError::bad_args(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8]) -> Vec<(Option<Frame>, Vec<u8>)> {
        let mut reader = tokio::io::BufReader::with_capacity(1024, input);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        loop {
            let frame = read_frame(&mut reader, &mut buf).await.unwrap();
            let end = frame.is_none();
            out.push((frame, buf.clone()));
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn a_huge_line_is_skipped_and_the_next_one_read() {
        let mut input = vec![b'x'; MAX_REQUEST_BYTES + 10];
        input.extend_from_slice(b"\n{\"cmd\":\"hello\"}\nlast");
        let got = frames(&input).await;
        assert_eq!(got[0].0, Some(Frame::TooLarge));
        assert_eq!(got[1], (Some(Frame::Line), b"{\"cmd\":\"hello\"}".to_vec()));
        assert_eq!(got[2], (Some(Frame::Line), b"last".to_vec()));
        assert_eq!(got[3].0, None);
    }

    #[test]
    fn requests_name_the_field_at_fault() {
        assert_eq!(parse_request(b"{}").unwrap_err().message, "cmd: missing");
        let e = parse_request(br#"{"cmd": 3}"#).unwrap_err();
        assert_eq!(e.message, "cmd: must be a string");
        let e = parse_request(br#"{"cmd": "x", "args": []}"#).unwrap_err();
        assert_eq!(e.message, "args: must be an object");
        assert_eq!(parse_request(b"\xff").unwrap_err().code, "bad_json");
        let ok = parse_request(br#"{"cmd": "hello"}"#).unwrap();
        assert_eq!(ok.cmd, "hello");
    }
}
