//! The Unix socket: binding it with the configured permissions, accepting
//! clients, and one request/response loop per client.
//!
//! A socket file left by a daemon that died is removed at start; one that
//! still answers belongs to a running daemon and is an error. Clients are
//! served concurrently, at most `MAX_CLIENTS` at once; each request is
//! answered in order on its connection.
//!
//! Idle clients must not lock operators out: a connection silent for
//! `IDLE_TIMEOUT` is closed, and when every slot is taken a client still
//! gets one of `SHORT_REQUEST_SLOTS` spare slots, where it must send its
//! request within `SHORT_REQUEST_TIMEOUT` and is answered once (what
//! `sendctl` does). Memory stays bounded: at most `MAX_CLIENTS +
//! SHORT_REQUEST_SLOTS` connections, each with a buffer of at most
//! `MAX_REQUEST_BYTES`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::protocol::{
    AdminError, Frame, MAX_REQUEST_BYTES, parse_request, read_frame, response_line,
};
use super::{AdminContext, handle};
use crate::config::AdminSection;

/// Most admin clients connected at once for any number of requests.
pub const MAX_CLIENTS: usize = 64;
/// Spare slots for one quick request each when the others are all taken;
/// more clients wait to be accepted.
pub const SHORT_REQUEST_SLOTS: usize = 16;
/// A client silent this long is disconnected, giving its slot back.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client on a spare slot has to send its request.
pub const SHORT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A client that does not read its response for this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AdminStartError {
    #[error(
        "admin socket {0}: another sendengine is answering on it; stop it or choose another [admin] socket"
    )]
    InUse(PathBuf),
    #[error(
        "admin socket {0}: a file that is not a socket is in the way; move it or choose another path"
    )]
    NotASocket(PathBuf),
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin socket {path}: {message}")]
    Owner { path: PathBuf, message: String },
}

/// Binds `[admin] socket` (replacing a stale one) and applies its mode and
/// ownership; `None` when no socket is configured.
pub fn bind(settings: &AdminSection) -> Result<Option<UnixListener>, AdminStartError> {
    let Some(path) = &settings.socket else {
        return Ok(None);
    };
    let io = |source| AdminStartError::Io {
        path: path.clone(),
        source,
    };
    remove_stale(path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(settings.mode)).map_err(io)?;
    set_owner(path, settings)?;
    Ok(Some(listener))
}

fn remove_stale(path: &Path) -> Result<(), AdminStartError> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(AdminStartError::NotASocket(path.to_owned()));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(AdminStartError::InUse(path.to_owned()));
    }
    std::fs::remove_file(path).map_err(|source| AdminStartError::Io {
        path: path.to_owned(),
        source,
    })
}

fn set_owner(path: &Path, settings: &AdminSection) -> Result<(), AdminStartError> {
    if settings.owner.is_none() && settings.group.is_none() {
        return Ok(());
    }
    let owner_error = |message: String| AdminStartError::Owner {
        path: path.to_owned(),
        message,
    };
    let uid = match &settings.owner {
        Some(o) => Some(lookup_id("/etc/passwd", o).map_err(owner_error)?),
        None => None,
    };
    let gid = match &settings.group {
        Some(g) => Some(lookup_id("/etc/group", g).map_err(owner_error)?),
        None => None,
    };
    std::os::unix::fs::chown(path, uid, gid).map_err(|source| AdminStartError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A numeric id as given, or the id of a name in a passwd/group file.
fn lookup_id(file: &str, name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("cannot read {file}: {e}"))?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let entry = fields.next()?;
            let id = fields.nth(1)?.parse::<u32>().ok()?;
            (entry == name).then_some(id)
        })
        .next()
        .ok_or_else(|| format!("`{name}` is not in {file}"))
}

/// Accepts clients until shutdown, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    ctx: Arc<AdminContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let spare = Arc::new(Semaphore::new(SHORT_REQUEST_SLOTS));
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_owned));
    loop {
        let slot = tokio::select! {
            slot = take_slot(&slots, &spare) => slot,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let Some(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        match accepted {
            Ok((stream, _)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if slot.spare {
                        serve_client(stream, &ctx, SHORT_REQUEST_TIMEOUT, Some(1)).await;
                    } else {
                        serve_client(stream, &ctx, IDLE_TIMEOUT, None).await;
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                log::warn!("admin socket accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// A connection's claim on the daemon: a regular slot, or a spare one
/// good for one quick request.
struct Slot {
    _permit: OwnedSemaphorePermit,
    spare: bool,
}

/// A regular slot when one is free, else the next spare one; `None` once
/// the semaphores are closed.
async fn take_slot(slots: &Arc<Semaphore>, spare: &Arc<Semaphore>) -> Option<Slot> {
    let slot = |spare| {
        move |permit| Slot {
            _permit: permit,
            spare,
        }
    };
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return Some(slot(false)(permit));
    }
    tokio::select! {
        permit = slots.clone().acquire_owned() => permit.ok().map(slot(false)),
        permit = spare.clone().acquire_owned() => permit.ok().map(slot(true)),
    }
}

/// Answers each request line in turn until the client hangs up, stays
/// silent for `idle` (the whole line must arrive within it) or has had
/// `max_requests` answers.
async fn serve_client(
    stream: UnixStream,
    ctx: &Arc<AdminContext>,
    idle: Duration,
    max_requests: Option<usize>,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut line = Vec::new();
    let mut answered = 0;
    loop {
        if max_requests.is_some_and(|max| answered >= max) {
            return;
        }
        let frame = tokio::time::timeout(idle, read_frame(&mut reader, &mut line)).await;
        let Ok(frame) = frame else { return };
        let result = match frame {
            Ok(None) | Err(_) => return,
            Ok(Some(Frame::TooLarge)) => Err(AdminError::new(
                "too_large",
                format!("the request is over {MAX_REQUEST_BYTES} bytes"),
            )),
            Ok(Some(Frame::Line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(Some(Frame::Line)) => match parse_request(&line) {
                Ok(request) => handle(ctx, request).await,
                Err(e) => Err(e),
            },
        };
        let response = response_line(&result);
        let written = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&response)).await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        answered += 1;
    }
}
