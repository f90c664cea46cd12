//! The accept loop every SMTP listener of ours runs: a connection gets a
//! slot of `max_connections` and a place among its address's
//! `max_connections_per_ip`, or a 421 that says which limit it met, then a
//! `Session` under the listener's policy. After shutdown the loop answers
//! 421 until the daemon has drained (a client retries later instead of
//! seeing "connection refused"), then closes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};

use super::auth_limit::client_key;
use super::session::{Policy, Session};
use crate::metrics::Refusal;
use crate::values::Reply;

/// Connections open per client address (an IPv6 client by its /64).
#[derive(Debug, Default)]
pub struct PerIpConnections {
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place in `PerIpConnections`; given back on drop.
pub struct IpPlace {
    owner: Arc<dyn PerIpOwner>,
    key: IpAddr,
}

/// Whatever holds the `PerIpConnections` a place was taken from.
trait PerIpOwner: Send + Sync {
    fn per_ip(&self) -> &PerIpConnections;
}

impl<P: Policy> PerIpOwner for P {
    fn per_ip(&self) -> &PerIpConnections {
        &self.basics().guards.per_ip
    }
}

impl PerIpConnections {
    /// Takes a place for `ip` if it has fewer than `limit` connections.
    fn enter(&self, ip: IpAddr, limit: usize) -> Option<IpAddr> {
        let key = client_key(ip);
        let mut open = self.lock();
        let count = open.entry(key).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(key)
    }

    fn leave(&self, key: IpAddr) {
        let mut open = self.lock();
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }

    /// Addresses with a connection open (for tests).
    pub fn addresses(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Counts stay consistent even if a holder panicked.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for IpPlace {
    fn drop(&mut self) {
        self.owner.per_ip().leave(self.key);
    }
}

/// What a listener task follows while it runs.
pub struct ListenerControl<P> {
    /// The policy new sessions get; a reload may send a new one.
    pub context: watch::Receiver<Arc<P>>,
    /// The `max_connections` limit, shared across the listeners of one kind.
    pub slots: Arc<Semaphore>,
    /// Set at SIGTERM: sessions say goodbye, new connections get 421.
    pub shutdown: watch::Receiver<bool>,
    /// Set once the drain is over: the listener closes.
    pub closed: watch::Receiver<bool>,
}

/// Binds an SMTP listener as `TcpListener::bind` does (SO_REUSEADDR, a
/// backlog of 1024), with TCP_NODELAY on the listening socket: Linux hands
/// it down to every accepted connection, which saves a setsockopt per
/// connection (sessions answer pipelined commands in one write, so Nagle
/// would only delay replies).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until shutdown, refuses them with 421 while the
/// daemon drains, and closes the listener at the end. `listener` comes
/// from `bind` (its connections inherit TCP_NODELAY).
pub async fn serve_listener<P: Policy>(listener: TcpListener, control: ListenerControl<P>) {
    let ListenerControl {
        context,
        slots,
        mut shutdown,
        mut closed,
    } = control;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            a = listener.accept() => a,
        };
        let Some((stream, peer)) = accepted_or_pause(accepted).await else {
            continue;
        };
        // A connection accepted as the shutdown began is refused like the
        // ones after it: the daemon announces the drain once the flag is set.
        if *shutdown.borrow() {
            tokio::spawn(refuse(stream, shutting_down()));
            break;
        }
        let ctx = context.borrow().clone();
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            ctx.count_refusal(Refusal::Busy);
            tokio::spawn(refuse(stream, busy()));
            continue;
        };
        let place = if ctx.trusted(peer.ip()) {
            None
        } else {
            let basics = ctx.basics();
            let limit = basics.limits.max_connections_per_ip;
            let Some(key) = basics.guards.per_ip.enter(peer.ip(), limit) else {
                ctx.count_refusal(Refusal::Busy);
                tokio::spawn(refuse(stream, too_many_from_address(limit)));
                continue;
            };
            Some(IpPlace {
                owner: ctx.clone(),
                key,
            })
        };
        let session = Session::new(ctx, stream, peer, shutdown.clone());
        tokio::spawn(async move {
            let _open = session.count_open();
            session.run().await;
            drop(place);
            drop(permit);
        });
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closed.wait_for(|closed| *closed) => return,
        };
        if let Some((stream, _)) = accepted_or_pause(accepted).await {
            tokio::spawn(refuse(stream, shutting_down()));
        }
    }
}

fn busy() -> Reply {
    Reply::new(421, "4.3.2", "Too many connections: try again later")
}

fn shutting_down() -> Reply {
    Reply::new(421, "4.3.2", "Service shutting down: try again later")
}

fn too_many_from_address(limit: usize) -> Reply {
    Reply::new(
        421,
        "4.7.0",
        format!(
            "Too many connections from your address (at most {limit} at once): close one and try again"
        ),
    )
}

/// An accepted connection, or a pause after a failed accept (out of file
/// descriptors and similar) so the loop waits rather than spins.
async fn accepted_or_pause(
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
) -> Option<(TcpStream, SocketAddr)> {
    match accepted {
        Ok(a) => Some(a),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// Answers a connection with a 421 and closes it.
async fn refuse(mut stream: TcpStream, reply: Reply) {
    use tokio::io::AsyncWriteExt;
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&out)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_per_address_are_limited_and_given_back() {
        let per_ip = PerIpConnections::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2::9".parse().unwrap();
        let k1 = per_ip.enter(a, 2).unwrap();
        let k2 = per_ip.enter(same_64, 2).unwrap();
        assert!(per_ip.enter(a, 2).is_none(), "the /64 counts as one client");
        assert!(per_ip.enter("192.0.2.1".parse().unwrap(), 2).is_some());
        per_ip.leave(k1);
        assert!(per_ip.enter(a, 2).is_some());
        per_ip.leave(k2);
        assert_eq!(per_ip.addresses(), 2);
    }
}
