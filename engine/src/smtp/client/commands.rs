//! The envelope's commands as they go out (MAIL, RCPT, DATA: one line each,
//! addresses checked before they are written) and their replies as they
//! come back, filed per recipient; the transaction (`transaction.rs`)
//! decides what to send next from them.

use super::{Envelope, Phase, Reply, SessionError};

/// Longest address we put in a command (RFC 5321 4.5.3.1.3: 256 octets path).
const MAX_ADDRESS_LEN: usize = 256;

/// The reply that tells the server sent "go ahead" to DATA.
pub(super) const START_MAIL_INPUT: u16 = 354;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Command {
    Mail,
    /// RCPT for the recipient at this index of the envelope.
    Rcpt(usize),
    Data,
}

impl Command {
    pub(super) fn phase(self) -> Phase {
        match self {
            Command::Mail => Phase::Mail,
            Command::Rcpt(_) => Phase::Rcpt,
            Command::Data => Phase::Data,
        }
    }
}

/// The replies to the envelope commands, as they come back.
#[derive(Default)]
pub(super) struct EnvelopeReplies {
    pub(super) mail: Option<Reply>,
    /// Recipients whose RCPT was accepted, by index.
    pub(super) accepted: Vec<usize>,
    pub(super) data: Option<Reply>,
}

impl EnvelopeReplies {
    pub(super) fn mail_refused(&self) -> bool {
        self.mail.as_ref().is_some_and(|reply| !reply.is_positive())
    }

    pub(super) fn data_started(&self) -> bool {
        self.data
            .as_ref()
            .is_some_and(|reply| reply.code == START_MAIL_INPUT)
    }

    /// Whether sending `next` is pointless: MAIL was refused, or DATA would
    /// follow no accepted recipient. Only matters between groups (lockstep).
    pub(super) fn stop_before(&self, next: Command) -> bool {
        self.mail_refused() || (next == Command::Data && self.accepted.is_empty())
    }

    /// Files one reply; refused recipients get their reply in `outcomes`.
    pub(super) fn record(
        &mut self,
        command: Command,
        reply: Reply,
        outcomes: &mut [Option<Reply>],
    ) -> Result<(), SessionError> {
        match command {
            Command::Mail => self.mail = Some(expect_completion(Phase::Mail, reply)?),
            Command::Rcpt(index) => {
                let reply = expect_completion(Phase::Rcpt, reply)?;
                // After a refused MAIL the RCPT replies (503s) say nothing about
                // the recipients; MAIL's reply will decide them.
                if reply.is_positive() {
                    self.accepted.push(index);
                } else if !self.mail_refused()
                    && let Some(outcome) = outcomes.get_mut(index)
                {
                    *outcome = Some(reply);
                }
            }
            Command::Data => {
                if reply.code != START_MAIL_INPUT && !reply.is_transient() && !reply.is_permanent()
                {
                    return Err(unexpected(Phase::Data, &reply));
                }
                self.data = Some(reply);
            }
        }
        Ok(())
    }
}

/// The command lines of one group, each ending in CRLF, for a single write.
pub(super) fn command_lines(
    group: &[Command],
    mail_command: &str,
    envelope: &Envelope<'_>,
) -> String {
    let mut text = String::new();
    for &command in group {
        match command {
            Command::Mail => text.push_str(mail_command),
            Command::Rcpt(index) => {
                let recipient = envelope.recipients.get(index).copied().unwrap_or_default();
                text.push_str(&format!("RCPT TO:<{recipient}>"));
            }
            Command::Data => text.push_str("DATA"),
        }
        text.push_str("\r\n");
    }
    text
}

/// Addresses go into command lines verbatim, so anything that could end the
/// line or the angle brackets early is refused here rather than sent.
pub(super) fn check_address(address: &str, enhanced: &str, role: &str) -> Result<(), Reply> {
    let bad_char = |c: char| c.is_ascii_control() || c == '<' || c == '>';
    if address.is_empty() || address.len() > MAX_ADDRESS_LEN || address.contains(bad_char) {
        let text = format!("bad {role} address syntax (refused by the sending client)");
        return Err(Reply::local(501, enhanced, text));
    }
    Ok(())
}

/// Replies to MAIL, RCPT and the final dot must be 2xx, 4xx or 5xx.
pub(super) fn expect_completion(phase: Phase, reply: Reply) -> Result<Reply, SessionError> {
    if reply.is_positive() || reply.is_transient() || reply.is_permanent() {
        Ok(reply)
    } else {
        Err(unexpected(phase, &reply))
    }
}

fn unexpected(phase: Phase, reply: &Reply) -> SessionError {
    SessionError::Protocol {
        phase,
        message: format!("unexpected reply {reply}"),
    }
}
