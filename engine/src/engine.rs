//! `Engine`: what the SMTP sessions, admission, the scheduler, the workers
//! and the admin socket share: the spool, the event log, the routes and
//! the configuration objects. Admission, the step between a finished DATA
//! and the reply to it, is `crate::admit`.

use std::net::SocketAddr;
use std::sync::Arc;

use sendengine_queue::Spool;

use crate::events::EventLog;
use crate::route::Router;
use crate::tenancy::TenancyStore;

/// Who sent a message, as the SMTP session knows it.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub(crate) peer: SocketAddr,
    pub(crate) helo: String,
    pub(crate) tls: bool,
    pub(crate) auth_user: Option<String>,
}

/// One SMTP transaction: MAIL FROM, the accepted RCPT TOs and the client.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub(crate) mail_from: String,
    pub(crate) recipients: Vec<String>,
    pub(crate) client: ClientInfo,
    /// The transaction is an SMTPUTF8 one (RFC 6531): asked for on MAIL
    /// over SMTP, or UTF-8 in an address given another way.
    pub(crate) smtputf8: bool,
}

impl Envelope {
    /// Whether an address of the envelope is UTF-8: the transaction is
    /// SMTPUTF8 whatever door it came through.
    pub(crate) fn has_utf8_address(mail_from: &str, recipients: &[String]) -> bool {
        !mail_from.is_ascii() || recipients.iter().any(|r| !r.is_ascii())
    }
}

/// Shared by every SMTP session, admission, the scheduler, the delivery
/// workers and the admin socket, for the daemon's lifetime.
pub struct Engine {
    pub(crate) hostname: String,
    /// `x_mailer` of config.toml: the X-Mailer when the group sets none.
    pub(crate) x_mailer: String,
    pub(crate) spool: Spool,
    pub(crate) events: EventLog,
    /// `[events] path`: where `queue inspect` looks for a departed
    /// message's history.
    pub(crate) events_path: Option<std::path::PathBuf>,
    pub(crate) router: Arc<Router>,
    pub(crate) tenancy: Arc<TenancyStore>,
    /// The tenant of relay-network mail without AUTH.
    pub(crate) default_user: Option<String>,
    /// `[dns] nameservers`, or the system's resolver.
    pub(crate) resolver: crate::dns::Resolver,
    /// `[cluster]`: the fleet this node belongs to; none when standalone.
    pub(crate) cluster: Option<Arc<crate::cluster::Cluster>>,
    /// `[tracking]`: links and opens are tracked; none, nothing is rewritten.
    pub(crate) tracking: Option<Arc<crate::tracking::Tracker>>,
    /// The DKIM signing threads.
    pub(crate) signing: crate::signing_pool::SigningPool,
}

impl Engine {
    /// Applies a change to the configuration objects and brings the routes
    /// in line; what the admin socket calls.
    pub fn change(
        &self,
        change: crate::tenancy::Change,
    ) -> Result<(), crate::tenancy::TenancyError> {
        self.tenancy.apply(change)?;
        self.router.sync();
        Ok(())
    }
}
