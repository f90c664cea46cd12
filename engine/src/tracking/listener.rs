//! The tracking listener: an accept loop of our own around hyper's HTTP/1
//! connection, serving the axum routes of `handlers`. Not `axum::serve`,
//! which bounds neither connections nor time: here at most
//! `max_connections` are served at once (the rest wait in the kernel's
//! backlog), a request head must arrive within `header_timeout` (and fit
//! in `MAX_HEAD_BYTES`), a TLS handshake within the same time, and a
//! connection lives at most `connection_timeout`, keep-alive and slow
//! writes included, so a slowloris client holds a slot for seconds, not
//! forever.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sendengine_queue::Spool;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::handlers::{self, Handlers};
use super::token::TokenKey;
use crate::config::TrackingSection;
use crate::events::EventLog;

/// hyper's read buffer, which bounds a request head (its minimum is 8 KB).
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Pause after a failed accept (out of file descriptors) before the next.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// The bound socket, made at start so a busy port fails the start.
pub struct TrackingListener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    section: TrackingSection,
}

impl TrackingListener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Binds `[tracking] listen`; `tls` from `tls_cert`/`tls_key` (the daemon
/// loads them as it does `[smtp_in]`'s).
pub async fn bind(
    section: &TrackingSection,
    tls: Option<TlsAcceptor>,
) -> Result<TrackingListener, (SocketAddr, std::io::Error)> {
    let listener = TcpListener::bind(section.listen)
        .await
        .map_err(|e| (section.listen, e))?;
    Ok(TrackingListener {
        listener,
        tls,
        section: section.clone(),
    })
}

/// Serves clicks and opens until `shutdown` turns true.
pub async fn serve(
    bound: TrackingListener,
    spool: Spool,
    events: EventLog,
    tokens: TokenKey,
    node: Option<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = handlers::router(Arc::new(Handlers {
        spool,
        events,
        tokens,
        node,
    }));
    let section = Arc::new(bound.section);
    let slots = Arc::new(Semaphore::new(section.max_connections));
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit,
            _ = stopped(&mut shutdown) => return,
        };
        let Ok(permit) = permit else { return };
        let accepted = tokio::select! {
            accepted = bound.listener.accept() => accepted,
            _ = stopped(&mut shutdown) => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                log::warn!("tracking listener: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let connection = Connection {
            router: router.clone(),
            tls: bound.tls.clone(),
            section: section.clone(),
            peer,
        };
        tokio::spawn(async move {
            let _slot = permit;
            let lifetime = connection.section.connection_timeout;
            let _ = tokio::time::timeout(lifetime, connection.serve(stream)).await;
        });
    }
}

/// Resolves once the daemon stops.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// One accepted connection and what serving it needs.
struct Connection {
    router: Router,
    tls: Option<TlsAcceptor>,
    section: Arc<TrackingSection>,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let peer = self.peer;
        // The handlers read the client's address from the request.
        let service = tower::ServiceExt::map_request(
            self.router,
            move |mut request: hyper::Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        );
        let service = TowerToHyperService::new(service);
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.section.header_timeout)
            .max_buf_size(MAX_HEAD_BYTES);
        let served = match self.tls {
            Some(acceptor) => {
                let handshake =
                    tokio::time::timeout(self.section.header_timeout, acceptor.accept(stream));
                let Ok(Ok(stream)) = handshake.await else {
                    return;
                };
                http.serve_connection(TokioIo::new(stream), service).await
            }
            None => http.serve_connection(TokioIo::new(stream), service).await,
        };
        if let Err(e) = served {
            log::debug!("tracking connection from {peer}: {e}");
        }
    }
}
