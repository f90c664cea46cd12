//! The HTTP API's sockets: accepting (at most `max_connections` open at
//! once), the optional TLS handshake, and a timeout on every read and
//! write, handed to axum as one `Listener`.
//!
//! Why our own listener: axum's `serve` sets no header-read timeout and
//! knows nothing of TLS. Here every connection is a [`TimedIo`]: a read or
//! a write that makes no progress for `read_timeout` fails the connection
//! (a slow header, a stalled upload, an idle keep-alive, a client that
//! does not read its answer). While a request is being answered, hyper
//! still polls the socket for a close; that wait is not a stall, so the
//! handler marks the connection busy ([`ConnInfo::busy`]) and the read
//! timer stops for that time (the body has its own bound, `request_timeout`).

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;

use crate::smtp::stream::Stream;

/// Connections accepted and handshaken, waiting for axum to take them.
const HANDOFF_QUEUE: usize = 64;

/// The accepted connections of one address, as axum takes them.
pub struct Incoming {
    rx: mpsc::Receiver<(TimedIo, SocketAddr)>,
    local: SocketAddr,
}

/// What the handler knows of its connection.
#[derive(Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
    busy: Arc<AtomicUsize>,
}

impl ConnInfo {
    /// Marks the connection busy (a request is being answered) until the
    /// guard drops.
    pub fn busy(&self) -> BusyGuard {
        self.busy.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.busy.clone())
    }
}

pub struct BusyGuard(Arc<AtomicUsize>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, Incoming>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, Incoming>) -> Self {
        let io = stream.io();
        ConnInfo {
            peer: *stream.remote_addr(),
            tls: io.inner.is_tls(),
            busy: io.busy.clone(),
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = TimedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TimedIo, SocketAddr) {
        match self.rx.recv().await {
            Some(connection) => connection,
            // The accept task ended (shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Starts accepting on `listener`: each connection takes a permit of
/// `slots` (released when it closes), goes through TLS if configured,
/// and is handed to axum.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    slots: Arc<Semaphore>,
    timeout: Duration,
) -> io::Result<(Incoming, tokio::task::JoinHandle<()>)> {
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: pause, do not spin.
                    log::warn!("http_in {local}: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let tx = tx.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let stream = match tls {
                    None => Stream::Plain(tcp),
                    Some(acceptor) => {
                        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => Stream::from(tls),
                            _ => return,
                        }
                    }
                };
                let _ = tx.send((TimedIo::new(stream, timeout, permit), peer)).await;
            });
        }
    });
    Ok((Incoming { rx, local }, task))
}

/// A connection whose reads and writes fail after `timeout` without
/// progress (reads only while no request is being answered).
pub struct TimedIo {
    inner: Stream,
    timeout: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    busy: Arc<AtomicUsize>,
    _permit: OwnedSemaphorePermit,
}

impl TimedIo {
    fn new(inner: Stream, timeout: Duration, permit: OwnedSemaphorePermit) -> TimedIo {
        TimedIo {
            inner,
            timeout,
            read_timer: None,
            write_timer: None,
            busy: Arc::new(AtomicUsize::new(0)),
            _permit: permit,
        }
    }
}

/// After a `Pending`: starts the timer if needed and fails once it fires.
fn stalled(
    timer: &mut Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Error> {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
    match sleep.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress for {}s", timeout.as_secs()),
        )),
        Poll::Pending => Poll::Pending,
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending if this.busy.load(Ordering::SeqCst) == 0 => {
                stalled(&mut this.read_timer, this.timeout, cx).map(Err)
            }
            Poll::Pending => {
                this.read_timer = None;
                Poll::Pending
            }
            ready => {
                this.read_timer = None;
                ready
            }
        }
    }
}

impl TimedIo {
    /// A write-side poll: a `Pending` runs the write timer, progress stops it.
    fn writing<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Pending => stalled(&mut self.write_timer, self.timeout, cx).map(Err),
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writing(cx, |io, cx| io.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writing(cx, |io, cx| io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writing(cx, |io, cx| io.poll_shutdown(cx))
    }
}
