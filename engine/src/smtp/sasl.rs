//! AUTH in the session core (RFC 4954, mechanisms PLAIN and LOGIN), for a
//! listener whose policy has an `Authenticator`.
//!
//! AUTH is offered over TLS, or in clear text only from loopback. Each
//! password check goes through the per-address failure limit at the moment
//! of verification (`AuthLimiter::begin_attempt`), so parallel guesses
//! cannot all be checked; the tenancy verifies unknown users against a
//! dummy hash, so the time taken does not tell which user names exist.

use std::io;
use std::sync::Arc;

use base64::Engine as _;

use super::auth_limit::{AuthLimiter, FAILURE_WINDOW};
use super::connection::Line;
use super::session::{Flow, Policy, Session};
use crate::metrics::Refusal;
use crate::tenancy::TenancyStore;
use crate::values::Reply;

/// Who may log in, and the failure limit that guards the door.
pub struct Authenticator {
    pub tenancy: Arc<TenancyStore>,
    /// Shared by every session and kept across reloads.
    pub limiter: Arc<AuthLimiter>,
    /// `auth_failures_per_ip`, for the refusal's sentence.
    pub max_failures: u32,
}

impl Authenticator {
    fn has_users(&self) -> bool {
        !self.tenancy.snapshot().users.is_empty()
    }

    /// PBKDF2 takes tens of milliseconds: off the async threads.
    async fn verify(&self, user: String, password: String) -> bool {
        let tenancy = self.tenancy.clone();
        tokio::task::spawn_blocking(move || tenancy.authenticate(&user, &password))
            .await
            .unwrap_or(false)
    }
}

impl<P: Policy> Session<P> {
    /// AUTH is offered over TLS, or in clear text only from loopback.
    pub(super) fn auth_allowed(&self) -> bool {
        let has_users = self
            .ctx
            .authenticator()
            .is_some_and(Authenticator::has_users);
        has_users && (self.client.tls || self.client.peer.ip().is_loopback())
    }

    pub(super) async fn auth(
        &mut self,
        mechanism: String,
        initial: Option<String>,
    ) -> io::Result<Flow> {
        let ctx = self.ctx.clone();
        let Some(auth) = ctx.authenticator().filter(|a| a.has_users()) else {
            return Ok(self.refuse(Reply::new(502, "5.5.1", "AUTH is not available here")));
        };
        if !self.auth_allowed() {
            return Ok(self.refuse(Reply::new(
                538,
                "5.7.11",
                "Encryption required: use STARTTLS before AUTH",
            )));
        }
        let ip = self.client.peer.ip();
        if auth.limiter.is_blocked(ip) {
            return Ok(self.too_many_auth_failures(auth));
        }
        if self.client.helo.is_none() || self.client.auth_user.is_some() || self.tx.is_some() {
            return Ok(self.refuse(Reply::new(
                503,
                "5.5.1",
                "AUTH goes after EHLO, once, and outside a mail transaction",
            )));
        }
        let credentials = match mechanism.as_str() {
            "PLAIN" => self.auth_plain(initial).await?,
            "LOGIN" => self.auth_login(initial).await?,
            _ => {
                return Ok(self.refuse(Reply::new(
                    504,
                    "5.5.4",
                    "Unsupported authentication mechanism: use PLAIN or LOGIN",
                )));
            }
        };
        let (user, password) = match credentials {
            Answer::Credentials(user, password) => (user, password),
            Answer::Unreadable => {
                return Ok(self.refuse(Reply::new(
                    501,
                    "5.5.2",
                    "Authentication cancelled or not valid base64",
                )));
            }
            Answer::OtherIdentity => {
                return Ok(self.refuse(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication as one user to act as another is not supported: \
                     leave the authorization identity empty",
                )));
            }
        };
        let Some(attempt) = auth.limiter.begin_attempt(ip).await else {
            return Ok(self.too_many_auth_failures(auth));
        };
        if auth.verify(user.clone(), password).await {
            drop(attempt);
            self.client.auth_user = Some(user);
            self.update_presence();
            return Ok(self.reply(Reply::new(235, "2.7.0", "Authentication successful")));
        }
        let blocked = attempt.failed();
        self.ctx.count_refusal(Refusal::AuthFailed);
        let flow = self.refuse(Reply::new(
            535,
            "5.7.8",
            "Authentication credentials invalid: check the user name and password",
        ));
        Ok(if blocked && matches!(flow, Flow::Continue) {
            self.too_many_auth_failures(auth)
        } else {
            flow
        })
    }

    /// The client's address failed AUTH too often: say so and hang up.
    fn too_many_auth_failures(&mut self, auth: &Authenticator) -> Flow {
        let minutes = FAILURE_WINDOW.as_secs() / 60;
        let limit = auth.max_failures;
        self.conn().queue_reply(&Reply::new(
            421,
            "4.7.0",
            format!(
                "Too many failed AUTH attempts from your address ({limit} in {minutes} minutes): try again later"
            ),
        ));
        Flow::Close
    }

    async fn auth_plain(&mut self, initial: Option<String>) -> io::Result<Answer> {
        let response = match initial {
            Some(r) => Some(r),
            None => self.challenge("").await?,
        };
        Ok(response
            .as_deref()
            .and_then(decode_b64)
            .map_or(Answer::Unreadable, |decoded| plain_answer(&decoded)))
    }

    async fn auth_login(&mut self, initial: Option<String>) -> io::Result<Answer> {
        let user = match initial {
            Some(r) => Some(r),
            None => self.challenge("VXNlcm5hbWU6").await?,
        };
        let Some(user) = user.as_deref().and_then(decode_b64) else {
            return Ok(Answer::Unreadable);
        };
        let Some(pass) = self
            .challenge("UGFzc3dvcmQ6")
            .await?
            .as_deref()
            .and_then(decode_b64)
        else {
            return Ok(Answer::Unreadable);
        };
        Ok(Answer::Credentials(
            String::from_utf8_lossy(&user).into_owned(),
            String::from_utf8_lossy(&pass).into_owned(),
        ))
    }

    /// Sends a 334 challenge and reads the client's answer ("*" cancels).
    async fn challenge(&mut self, text: &str) -> io::Result<Option<String>> {
        let limit = self.limits().max_line_length;
        let timeout = self.limits().command_timeout;
        self.conn().queue_raw(format!("334 {text}\r\n").as_bytes());
        self.send().await?;
        match tokio::time::timeout(timeout, self.conn().read_line(limit)).await {
            Ok(Ok(Line::Complete(line))) if line != b"*" => {
                Ok(Some(String::from_utf8_lossy(&line).into_owned()))
            }
            Ok(Err(e)) => Err(e),
            _ => Ok(None),
        }
    }
}

/// What the client answered to AUTH.
enum Answer {
    Credentials(String, String),
    /// Cancelled, not base64, or not the mechanism's form.
    Unreadable,
    /// PLAIN with an authorization identity other than the user: RFC 4616
    /// section 2 has the server refuse what it does not allow, and no
    /// user may act as another here.
    OtherIdentity,
}

/// PLAIN's `authzid NUL authcid NUL password`.
fn plain_answer(decoded: &[u8]) -> Answer {
    let mut parts = decoded.split(|b| *b == 0);
    let (Some(authz), Some(user), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::Unreadable;
    };
    if !authz.is_empty() && authz != user {
        return Answer::OtherIdentity;
    }
    Answer::Credentials(
        String::from_utf8_lossy(user).into_owned(),
        String::from_utf8_lossy(pass).into_owned(),
    )
}

fn decode_b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(decoded: &[u8]) -> Option<(String, String)> {
        match plain_answer(decoded) {
            Answer::Credentials(user, pass) => Some((user, pass)),
            _ => None,
        }
    }

    #[test]
    fn plain_takes_an_empty_or_the_same_authorization_identity_only() {
        let app = Some(("app".to_owned(), "secret".to_owned()));
        assert_eq!(credentials(b"\0app\0secret"), app);
        assert_eq!(credentials(b"app\0app\0secret"), app);
        assert!(matches!(
            plain_answer(b"other\0app\0secret"),
            Answer::OtherIdentity
        ));
        assert!(matches!(plain_answer(b"app\0secret"), Answer::Unreadable));
        assert!(matches!(
            plain_answer(b"\0app\0sec\0ret"),
            Answer::Unreadable
        ));
    }
}
